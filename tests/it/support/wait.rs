//! A bounded wait for a condition, for the tests that await a state instead of sleeping.

use std::time::Duration;

/// Waits (bounded) until `check` holds.
pub async fn until<F: AsyncFnMut() -> bool>(timeout: Duration, mut check: F) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
