//! `store.url` shown without its password: errors, logs and the config's `Debug` use it
//! whether or not the binary was built with PostgreSQL support.

/// `url` with its password replaced by `***`, for errors and logs.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "[not a URL]".into();
    };
    if parsed.password().is_some() {
        // Cannot fail: the URL has a host, since it has a password.
        let _ = parsed.set_password(Some("***"));
    }
    // libpq accepts a `password=` query parameter too.
    let secret = |k: &str| k.eq_ignore_ascii_case("password");
    if parsed.query_pairs().any(|(k, _)| secret(&k)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn the_password_never_shows() {
        assert_eq!(
            redact_url("postgres://relay:s3cret@db.internal:5432/relay"),
            "postgres://relay:***@db.internal:5432/relay"
        );
        assert_eq!(
            redact_url("postgres://relay@127.0.0.1/relay?password=s3cret&sslmode=disable"),
            "postgres://relay@127.0.0.1/relay?password=***&sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://relay@127.0.0.1/relay"),
            "postgres://relay@127.0.0.1/relay"
        );
        assert!(!redact_url("postgres://a:p@ss@h/db").contains("p@ss"));
    }
}
