//! The durable store: records, states, attempts, dedupe keys and claims (helper "relay").
