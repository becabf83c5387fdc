//! Compiling `[auth.signature]`: algorithm, encoding, where the signature comes, the HMAC key
//! and the message template, every `${VAR}` read from the environment.

use std::ops::Range;

use toml::Spanned;

use super::{Compiler, EnvMode, span};
use crate::rules::model::{SigAlgorithm, SigEncoding, SigLocation, SigPart, Signature};
use crate::rules::raw::RawSignature;

const KEY: &str = "auth.signature";

impl Compiler<'_, '_> {
    /// The signature's parameter name (normalised), read before the fields are compiled so
    /// that a field reading it is refused.
    pub(super) fn signature_param(raw: &RawSignature) -> Option<&str> {
        raw.param.as_ref().map(|p| p.get_ref().as_str())
    }

    /// `None` when something is wrong (reported) or when `env` is `Ignore` (the secrets are
    /// not read, so no signature can be checked; `map` and `test` ignore `[auth]`).
    pub(super) fn signature(
        &mut self,
        raw: Spanned<RawSignature>,
        env: EnvMode,
    ) -> Option<Signature> {
        let at = raw.span();
        let raw = raw.into_inner();
        let algorithm = SigAlgorithm::parse(raw.algorithm.get_ref());
        if algorithm.is_none() {
            self.err(
                span(&raw.algorithm),
                format!(
                    "{KEY}.algorithm = {:?}: expected \"md5\", \"sha1\", \"sha256\" (a hash of message) or \"hmac-sha1\", \"hmac-sha256\" (keyed with secret)",
                    raw.algorithm.get_ref()
                ),
            );
        }
        let encoding = match raw.encoding.as_ref().map(|e| e.get_ref().as_str()) {
            None | Some("hex") => Some(SigEncoding::Hex),
            Some("base64") => Some(SigEncoding::Base64),
            Some(other) => {
                self.err(
                    raw.encoding.as_ref().and_then(span),
                    format!(
                        "{KEY}.encoding = {other:?}: expected \"hex\" (either case) or \"base64\""
                    ),
                );
                None
            }
        };
        let location = match (&raw.param, &raw.header) {
            (Some(p), None) if p.get_ref().trim().is_empty() => {
                self.err(
                    span(p),
                    format!("{KEY}.param is empty: name the parameter that carries the signature"),
                );
                None
            }
            (Some(p), None) => Some(SigLocation::Param(self.norm(p.get_ref()))),
            (None, Some(h)) => {
                match hyper::header::HeaderName::from_bytes(h.get_ref().as_bytes()) {
                    Ok(name) => Some(SigLocation::Header(name.as_str().to_string())),
                    Err(_) => {
                        self.err(span(h), format!("{KEY}.header = {:?}: not a valid header name (e.g. \"X-Signature\")", h.get_ref()));
                        None
                    }
                }
            }
            (Some(_), Some(h)) => {
                self.err(span(h), format!("{KEY}: give exactly one of `param` (a query or body parameter) or `header`, not both"));
                None
            }
            (None, None) => {
                self.err(Some(at.clone()), format!("{KEY}: where does the sender put the signature? give `param = \"signature\"` or `header = \"X-Signature\"`"));
                None
            }
        };
        let secret = match (algorithm, &raw.secret) {
            (Some(a), None) if a.is_hmac() => {
                self.err(Some(at.clone()), format!("{KEY}: algorithm {:?} needs `secret` (the HMAC key, e.g. secret = \"${{WEBHOOK_SECRET}}\")", raw.algorithm.get_ref()));
                None
            }
            (Some(a), Some(s)) if !a.is_hmac() => {
                self.err(span(s), format!("{KEY}.secret: algorithm {:?} is a plain hash of `message` and takes no key; put the secret in the message (\"...${{VAR}}\") or use \"hmac-sha256\"", raw.algorithm.get_ref()));
                None
            }
            (_, Some(s)) => {
                let value = self.env(&format!("{KEY}.secret"), s, env);
                if value.as_deref() == Some("") {
                    self.err(span(s), format!("{KEY}.secret is empty: an HMAC with an empty key can be forged by anyone"));
                }
                value
            }
            _ => None,
        };
        let message = self.sig_message(&raw.message, location.as_ref(), env);
        if env == EnvMode::Ignore {
            return None;
        }
        Some(Signature {
            algorithm: algorithm?,
            message: message?,
            location: location?,
            encoding: encoding?,
            secret: match algorithm? {
                a if a.is_hmac() => Some(secret?),
                _ => None,
            },
        })
    }

    /// `{name}` a parameter, `{@body}` the raw body, `${VAR}` the environment, the rest as is.
    fn sig_message(
        &mut self,
        t: &Spanned<String>,
        location: Option<&SigLocation>,
        env: EnvMode,
    ) -> Option<Vec<SigPart>> {
        let at = span(t);
        let key = format!("{KEY}.message");
        let text = t.get_ref().as_str();
        let mut parts = Vec::new();
        let mut rest = text;
        let mut ok = true;
        while !rest.is_empty() {
            let Some(open) = rest.find(['{', '}', '$']) else {
                parts.push(SigPart::Lit(rest.to_string()));
                break;
            };
            if open > 0 {
                parts.push(SigPart::Lit(rest[..open].to_string()));
            }
            let here = &rest[open..];
            if here.starts_with('}') {
                self.err(
                    at.clone(),
                    format!("{key}: a '}}' without '{{' in {text:?}"),
                );
                return None;
            }
            if here.starts_with('$') && !here.starts_with("${") {
                parts.push(SigPart::Lit("$".into()));
                rest = &here[1..];
                continue;
            }
            let is_env = here.starts_with("${");
            let after = &here[if is_env { 2 } else { 1 }..];
            let Some(close) = after.find('}') else {
                self.err(at.clone(), format!("{key}: an unclosed '{{' in {text:?}"));
                return None;
            };
            let name = &after[..close];
            rest = &after[close + 1..];
            if is_env {
                match self.env_var(&key, name, at.clone(), env) {
                    Some(v) => parts.push(SigPart::Secret(v)),
                    None => ok = false,
                }
                continue;
            }
            if name == "@body" {
                parts.push(SigPart::Body);
                continue;
            }
            let plain = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_alphanumeric() || "_-.~[]".contains(c));
            if !plain {
                self.err(at.clone(), format!("{key}: {{{name}}} is neither a parameter name (letters, digits, _ - . ~) nor {{@body}} (the raw POST body)"));
                ok = false;
                continue;
            }
            let name = self.norm(name);
            if location == Some(&SigLocation::Param(name.clone())) {
                self.err(at.clone(), format!("{key}: {{{name}}} is the signature parameter itself; a signature cannot sign itself"));
                ok = false;
                continue;
            }
            parts.push(SigPart::Param(name));
        }
        if parts.is_empty() {
            self.err(at, format!("{key} is empty: expected what the sender hashes, e.g. \"{{timestamp}}{{eventId}}${{SECRET}}\" or \"{{@body}}\""));
            return None;
        }
        ok.then_some(parts)
    }

    /// Reads one environment variable named in `key`; reported when unset or empty.
    pub(super) fn env_var(
        &mut self,
        key: &str,
        var: &str,
        at: Option<Range<usize>>,
        env: EnvMode,
    ) -> Option<String> {
        if env == EnvMode::Ignore {
            return None;
        }
        match std::env::var(var) {
            Ok(val) if !val.is_empty() => Some(val),
            _ => {
                self.err(at, format!("{key}: environment variable {var} is not set (or empty); set it before starting the relay (`postback-relay check --no-env` checks the rules without reading secrets)"));
                None
            }
        }
    }
}
