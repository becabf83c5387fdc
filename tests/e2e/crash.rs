//! kill -9 after the answers: every acknowledged postback still reaches Scaleo.
