//! Which Scaleo network a SQLite store belongs to: a one-line file `scaleo-network` next to
//! `relay.db` names the `scaleo.base_url` the store was created for, and `serve` refuses to
//! start on a store made for another network. So the sandbox's test conversions can never
//! be forwarded to a real network (nor a real network's to the sandbox), whatever
//! `store.path` says.
//!
//! A store without the file (a new one, or one from before the file existed) is claimed by
//! the first relay that starts on it. PostgreSQL stores carry no such file: give each
//! network its own database.

use std::path::{Path, PathBuf};

/// The file in the store directory naming the network.
pub const FILE: &str = "scaleo-network";

/// Why a relay may not start on a store directory.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The store was created for another Scaleo network.
    #[error(
        "the store in {dir} belongs to another Scaleo network: {file} names {stored}, but \
         scaleo.base_url is {wanted}; starting here would forward that network's records to \
         {wanted}. Give this relay its own store directory (store.path, or RELAY__STORE__PATH), \
         or, if it is the same network under a new address, write {wanted} into {file}"
    )]
    Other {
        dir: String,
        file: String,
        stored: String,
        wanted: String,
    },
    /// The marker could not be read or written.
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

/// How a base URL is compared: without a trailing `/`, scheme and host in lower case.
pub fn normalize(base_url: &str) -> String {
    let url = base_url.trim().trim_end_matches('/');
    match url.find("://") {
        Some(i) => {
            let host_end = url[i + 3..].find('/').map_or(url.len(), |j| i + 3 + j);
            format!(
                "{}{}",
                url[..host_end].to_ascii_lowercase(),
                &url[host_end..]
            )
        }
        None => url.to_string(),
    }
}

/// Checks that the store in `dir` belongs to `base_url`, writing the marker when the store
/// has none yet (creating `dir` if needed).
pub fn claim(dir: &Path, base_url: &str) -> Result<(), NetworkError> {
    let file = dir.join(FILE);
    let io = |path: &PathBuf, e: std::io::Error| NetworkError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let wanted = normalize(base_url);
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let stored = normalize(text.lines().next().unwrap_or_default());
            if stored == wanted {
                Ok(())
            } else {
                Err(NetworkError::Other {
                    dir: dir.display().to_string(),
                    file: file.display().to_string(),
                    stored,
                    wanted,
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| io(&dir.to_path_buf(), e))?;
            std::fs::write(&file, format!("{wanted}\n")).map_err(|e| io(&file, e))
        }
        Err(e) => Err(io(&file, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_store_is_claimed_and_then_refuses_another_network() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        claim(&data, "http://127.0.0.1:9100").unwrap();
        assert_eq!(
            std::fs::read_to_string(data.join(FILE)).unwrap(),
            "http://127.0.0.1:9100\n"
        );
        claim(&data, "HTTP://127.0.0.1:9100/").unwrap();
        let err = claim(&data, "https://track.example.com")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("names http://127.0.0.1:9100")
                && err.contains("scaleo.base_url is https://track.example.com")
                && err.contains("store.path"),
            "{err}"
        );
    }
}
