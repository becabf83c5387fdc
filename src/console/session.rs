//! Console sessions: a server-side map from a random session id (the cookie) to the CSRF
//! token of that session and its expiry. The cookie carries only the 256-bit random id,
//! never a secret of the relay; signing out or a restart forgets every session.
//!
//! The map is bounded ([`MAX_SESSIONS`]): expired sessions go first, then the ones closest to
//! expiry. Ids are looked up by their SHA-256 digest, so no comparison of a guessed id with a
//! real one depends on how many bytes match.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

/// The session cookie's name.
pub const COOKIE: &str = "relay_session";
/// The sign-in form's cookie (a double-submit token: there is no session yet to tie it to).
pub const SIGNIN_COOKIE: &str = "relay_signin";
/// How long a session lasts after sign-in.
pub const TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once.
pub const MAX_SESSIONS: usize = 256;

/// What a request learns about its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The token every POST of this session must carry.
    pub csrf: String,
    /// A one-time message from the previous action (shown once).
    pub flash: Option<String>,
}

struct Entry {
    csrf: String,
    expires: Instant,
    flash: Option<String>,
}

/// Every live session of this process.
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Entry>>,
    rng: SystemRandom,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            map: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
        }
    }
}

fn key(id: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, id.as_bytes());
    let mut k = [0u8; 32];
    k.copy_from_slice(d.as_ref());
    k
}

impl Sessions {
    /// A fresh random token (64 hex digits) from the system's CSPRNG.
    pub fn random_token(&self) -> String {
        let mut bytes = [0u8; 32];
        // The system RNG does not fail on supported platforms; a failure leaves no usable
        // token, so refuse loudly rather than hand out a predictable one.
        self.rng
            .fill(&mut bytes)
            .expect("the system random number generator failed");
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Starts a session; returns its id (for the cookie).
    pub fn create(&self) -> String {
        let id = self.random_token();
        let csrf = self.random_token();
        let now = Instant::now();
        let mut map = crate::sync::lock(&self.map);
        map.retain(|_, e| e.expires > now);
        while map.len() >= MAX_SESSIONS {
            let Some(oldest) = map.iter().min_by_key(|(_, e)| e.expires).map(|(k, _)| *k) else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(
            key(&id),
            Entry {
                csrf,
                expires: now + TTL,
                flash: None,
            },
        );
        id
    }

    /// The live session `id`, taking its flash message.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = crate::sync::lock(&self.map);
        let k = key(id);
        let entry = map.get_mut(&k)?;
        if entry.expires <= Instant::now() {
            map.remove(&k);
            return None;
        }
        Some(Session {
            csrf: entry.csrf.clone(),
            flash: entry.flash.take(),
        })
    }

    /// Leaves `message` for the next page this session sees.
    pub fn flash(&self, id: &str, message: String) {
        let mut map = crate::sync::lock(&self.map);
        if let Some(e) = map.get_mut(&key(id)) {
            e.flash = Some(message);
        }
    }

    /// Ends session `id` (sign-out).
    pub fn remove(&self, id: &str) {
        let mut map = crate::sync::lock(&self.map);
        map.remove(&key(id));
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (n, v) = pair.trim().split_once('=')?;
        (n == name).then_some(v)
    })
}

/// A `Set-Cookie` value for `name` (cleared when `value` is `None`).
pub fn set_cookie(name: &str, value: Option<&str>, path: &str) -> String {
    match value {
        Some(v) => format!(
            "{name}={v}; HttpOnly; SameSite=Strict; Path={path}; Max-Age={}",
            TTL.as_secs()
        ),
        None => format!("{name}=; HttpOnly; SameSite=Strict; Path={path}; Max-Age=0"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_until_removed_and_its_flash_shows_once() {
        let s = Sessions::default();
        let id = s.create();
        assert_eq!(id.len(), 64);
        let first = s.get(&id).expect("live");
        assert_eq!(first.csrf.len(), 64);
        assert_ne!(first.csrf, id);
        s.flash(&id, "done".into());
        assert_eq!(s.get(&id).unwrap().flash.as_deref(), Some("done"));
        assert_eq!(s.get(&id).unwrap().flash, None);
        s.remove(&id);
        assert!(s.get(&id).is_none());
        assert!(s.get("not-a-session").is_none());
    }

    #[test]
    fn the_map_stays_bounded() {
        let s = Sessions::default();
        let ids: Vec<String> = (0..MAX_SESSIONS + 10).map(|_| s.create()).collect();
        assert!(s.map.lock().unwrap().len() <= MAX_SESSIONS);
        assert!(s.get(ids.last().unwrap()).is_some(), "the newest survives");
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let h = "a=1; relay_session=abc; relay_session_x=zzz";
        assert_eq!(cookie(h, COOKIE), Some("abc"));
        assert_eq!(cookie("relay_session_x=zzz", COOKIE), None);
        let set = set_cookie(COOKIE, Some("abc"), "/");
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/")
        );
    }
}
