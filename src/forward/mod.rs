//! Forwarding to Scaleo: claim, rate-limit, POST, classify, settle (helper "relay").
