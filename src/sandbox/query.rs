//! The query string side of a call: finding the `api-key` and redacting it.

/// The value of the last `api-key` parameter (PHP keeps the last of repeated names).
pub(crate) fn api_key(query: &str) -> Option<String> {
    query
        .rsplit('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(name, _)| decode_component(name) == "api-key")
        .map(|(_, value)| decode_component(value))
}

/// The query with the value of every `api-key` parameter (or a look-alike such as
/// `API_KEY`, in case a client misspells it) replaced by `***`.
pub(crate) fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            if is_key_name(&decode_component(name)) {
                format!("{name}=***")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn is_key_name(name: &str) -> bool {
    ["api-key", "api_key", "apikey"]
        .iter()
        .any(|key| name.eq_ignore_ascii_case(key))
}

/// Form-urlencoded decoding of one name or value: `+` is a space, `%XX` a byte; a malformed
/// escape stays literal and invalid UTF-8 becomes U+FFFD.
fn decode_component(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match bytes.get(i + 1..i + 3).and_then(hex_byte) {
                Some(byte) => {
                    out.push(byte);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Two hex digits as a byte (`from_str_radix` alone would also take a sign).
fn hex_byte(pair: &[u8]) -> Option<u8> {
    let &[high, low] = pair else { return None };
    let digit = |b: u8| char::from(b).to_digit(16);
    u8::try_from(digit(high)? * 16 + digit(low)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_every_api_key_and_keeps_the_rest() {
        assert_eq!(redact_query("api-key=secret&x=1"), "api-key=***&x=1");
        assert_eq!(
            redact_query("a=1&api%2Dkey=s&api-key"),
            "a=1&api%2Dkey=***&api-key=***"
        );
        assert_eq!(redact_query(""), "");
        assert_eq!(redact_query("API_KEY=s&apikey=t"), "API_KEY=***&apikey=***");
    }

    #[test]
    fn reads_the_last_api_key_decoded() {
        assert_eq!(api_key("api-key=a&api-key=b%2Bc").as_deref(), Some("b+c"));
        assert_eq!(api_key("x=1"), None);
        assert_eq!(api_key("api-key").as_deref(), Some(""));
    }

    #[test]
    fn decodes_form_components_leniently() {
        assert_eq!(decode_component("a+b%21%zz%"), "a b!%zz%");
        assert_eq!(decode_component("%+f%2"), "% f%2");
        assert_eq!(decode_component("%ff"), "\u{fffd}");
    }
}
