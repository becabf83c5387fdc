//! The authorise stages of ingest: the caller's IP against the source's allow list, then its
//! credentials (the token, the signature) once the parameters are decoded.

use std::net::IpAddr;

use super::error::IngestError;
use super::request::{Params, token_matches};
use super::signature;
use crate::rules::{Rule, SigLocation, same_param};

/// What the request carried besides its parameters that a credential may come in.
pub(crate) struct Credentials {
    /// `X-Postback-Token`.
    pub header_token: Option<String>,
    /// The signature header of `[auth.signature]`, when it names one.
    pub signature_header: Option<String>,
}

/// The caller must be in the allow list when the source has one.
pub(crate) fn allow_ip(rule: &Rule, ip: IpAddr) -> Result<(), IngestError> {
    let allow = &rule.auth.allow_ips;
    if allow.is_empty() || allow.iter().any(|n| n.contains(&ip)) {
        return Ok(());
    }
    tracing::warn!(source = rule.source, client_ip = %ip, "postback refused: caller not in the allow list");
    Err(IngestError::Forbidden {
        ip,
        source_id: rule.source.clone(),
    })
}

/// The value of the first parameter (query first, then body) named `wanted`.
fn param<'a>(params: &'a Params, wanted: &str, ignore_case: bool) -> Option<&'a str> {
    params
        .query
        .iter()
        .chain(&params.body)
        .find(|(n, _)| same_param(n, wanted, ignore_case))
        .map(|(_, v)| v.as_str())
}

/// The token (parameter, else header) and the signature must be right when the source
/// asks for them.
pub(crate) fn credentials(
    rule: &Rule,
    params: &Params,
    body: &[u8],
    given: Credentials,
    ip: IpAddr,
) -> Result<(), IngestError> {
    let auth = &rule.auth;
    let ic = rule.params_ignore_case();
    if let Some(expected) = &auth.token {
        let token = param(params, &auth.token_param, ic)
            .map(str::to_string)
            .or(given.header_token);
        if !token.is_some_and(|t| token_matches(expected, &t)) {
            tracing::warn!(source = rule.source, client_ip = %ip, "postback refused: token missing or wrong");
            return Err(IngestError::Unauthorized(format!(
                "token missing or wrong (parameter {:?} or header X-Postback-Token)",
                auth.token_param
            )));
        }
    }
    if let Some(sig) = &auth.signature {
        let (signature, place) = match &sig.location {
            SigLocation::Param(name) => (
                param(params, name, ic).map(str::to_string),
                format!("parameter {name:?}"),
            ),
            SigLocation::Header(h) => (given.signature_header, format!("header {h:?}")),
        };
        let all: Vec<(String, String)> = params.query.iter().chain(&params.body).cloned().collect();
        let valid = signature
            .as_deref()
            .is_some_and(|s| signature::verify(sig, &all, body, s, ic));
        if !valid {
            let what = if signature.is_some() {
                "wrong"
            } else {
                "missing"
            };
            tracing::warn!(source = rule.source, client_ip = %ip, "postback refused: signature {what}");
            return Err(IngestError::Unauthorized(format!(
                "signature {what} ({place})"
            )));
        }
    }
    Ok(())
}
