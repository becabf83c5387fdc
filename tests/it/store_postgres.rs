//! The PostgreSQL store against a real server started by the harness: the behaviours of the
//! SQLite store (dedupe, leases, settles, fairness, pauses, replay, purge) and what several
//! instances sharing one database add (dedupe and claims across instances, the shared rate
//! limit). Two `Store` handles connected to the same database stand for two instances.
//!
//! The behaviours both backends share are in `support/store_suite.rs`; here they run on a
//! fresh database, the suite's "other instance" being a second `Store` connected to it.

use crate::support::pg::{self, sql};
use crate::support::relay_records as records;
use crate::support::store_suite as suite;
use crate::support::wait;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postback_relay::lifecycle::{self, Decision, Transitions};
use postback_relay::store::{ChangeRoute, Inserted, State, Store, StoreError};
use records::{queued, store_config};
use serde_json::{Map, Value, json};
use suite::{Backend, stored_id};

/// One instance on the database at `url`.
async fn instance(url: &str) -> Store {
    let dir = std::env::temp_dir();
    let mut cfg = store_config(&dir);
    cfg.url = Some(url.to_string());
    Store::connect(&cfg).await.expect("store connects")
}

/// A fresh database of its own; every open is another instance on it.
struct Postgres {
    url: String,
}

impl Postgres {
    async fn new() -> Postgres {
        Postgres {
            url: pg::fresh_db().await,
        }
    }
}

impl Backend for Postgres {
    async fn open(&self) -> Store {
        instance(&self.url).await
    }

    async fn other(&self, _store: &Store) -> Store {
        instance(&self.url).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_is_committed_when_answered_and_seen_by_other_instances() {
    let url = pg::fresh_db().await;
    let (a, b) = (instance(&url).await, instance(&url).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let (a, b) = (a.clone(), b.clone());
        tasks.spawn(async move {
            let id = stored_id(
                a.insert(queued("acme", &format!("c{i}"), None))
                    .await
                    .unwrap(),
            );
            // The other instance sees the record as soon as the caller is answered.
            let seen = b.get(id).await.unwrap();
            assert!(
                seen.is_some(),
                "record {id} answered before it was committed"
            );
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(
        b.counts_by_state().await.unwrap(),
        vec![(State::Queued, 100)]
    );
}

#[tokio::test]
async fn body_and_raw_postback_are_stored_exactly() {
    suite::body_and_raw_postback_are_stored_exactly(&Postgres::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dedupe_holds_within_the_window_across_instances_and_restarts() {
    suite::dedupe_holds_within_the_window_across_instances_and_restarts(&Postgres::new().await)
        .await;
}

#[tokio::test]
async fn a_dead_original_does_not_block_its_key() {
    suite::a_dead_original_does_not_block_its_key(&Postgres::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_of_a_crashed_instance_is_reclaimed() {
    suite::an_expired_lease_of_a_crashed_instance_is_reclaimed(&Postgres::new().await).await;
}

#[tokio::test]
async fn a_settle_after_a_lost_lease_is_refused_but_the_attempt_is_kept() {
    suite::a_settle_after_a_lost_lease_is_refused_but_the_attempt_is_kept(&Postgres::new().await)
        .await;
}

#[tokio::test]
async fn every_outcome_is_stored_with_its_attempt() {
    suite::every_outcome_is_stored_with_its_attempt(&Postgres::new().await).await;
}

#[tokio::test]
async fn fresh_records_are_not_starved_by_retries() {
    suite::fresh_records_are_not_starved_by_retries(&Postgres::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_never_share_a_record() {
    suite::concurrent_claims_never_share_a_record(&Postgres::new().await).await;
}

#[tokio::test]
async fn resuming_all_lifts_the_network_pauses_of_sources() {
    suite::resuming_all_lifts_the_network_pauses_of_sources(&Postgres::new().await).await;
}

#[tokio::test]
async fn a_repeat_on_a_source_without_updates_previews_as_a_duplicate() {
    suite::a_repeat_on_a_source_without_updates_previews_as_a_duplicate(&Postgres::new().await)
        .await;
}

#[tokio::test]
async fn an_outage_extends_the_age_of_its_own_sources() {
    suite::an_outage_extends_the_age_of_its_own_sources(&Postgres::new().await).await;
}

#[tokio::test]
async fn pauses_persist_and_stop_claims() {
    suite::pauses_persist_and_stop_claims(&Postgres::new().await).await;
}

#[tokio::test]
async fn requeue_replays_rejected_and_dedupe_applies() {
    suite::requeue_replays_rejected_and_dedupe_applies(&Postgres::new().await).await;
}

#[tokio::test]
async fn purge_removes_only_finished_records_past_retention() {
    suite::purge_removes_only_finished_records_past_retention(&Postgres::new().await).await;
}

#[tokio::test]
async fn a_plain_resend_of_a_conversion_is_a_duplicate() {
    suite::a_plain_resend_of_a_conversion_is_a_duplicate(&Postgres::new().await).await;
}

#[tokio::test]
async fn a_status_change_after_delivery_is_queued_with_the_lead_id() {
    suite::a_status_change_after_delivery_is_queued_with_the_lead_id(&Postgres::new().await).await;
}

#[tokio::test]
async fn a_status_that_would_move_the_conversion_back_is_stale() {
    suite::a_status_that_would_move_the_conversion_back_is_stale(&Postgres::new().await).await;
}

#[tokio::test]
async fn a_change_of_an_unsent_original_is_folded_into_it() {
    suite::a_change_of_an_unsent_original_is_folded_into_it(&Postgres::new().await).await;
}

#[tokio::test]
async fn a_change_of_an_original_in_flight_waits_and_is_folded_on_retry() {
    suite::a_change_of_an_original_in_flight_waits_and_is_folded_on_retry(&Postgres::new().await)
        .await;
}

#[tokio::test]
async fn a_change_waiting_for_its_original_goes_once_it_is_delivered() {
    suite::a_change_waiting_for_its_original_goes_once_it_is_delivered(&Postgres::new().await)
        .await;
}

#[tokio::test]
async fn two_quick_changes_after_delivery_collapse_into_one() {
    suite::two_quick_changes_after_delivery_collapse_into_one(&Postgres::new().await).await;
}

#[tokio::test]
async fn a_change_of_an_original_scaleo_refused_is_dead_naming_it() {
    suite::a_change_of_an_original_scaleo_refused_is_dead_naming_it(&Postgres::new().await).await;
}

#[tokio::test]
async fn an_update_only_postback_finds_its_conversion_by_order_id() {
    suite::an_update_only_postback_finds_its_conversion_by_order_id(&Postgres::new().await).await;
}

#[tokio::test]
async fn the_conversion_memory_outlives_retention() {
    suite::the_conversion_memory_outlives_retention(&Postgres::new().await).await;
}

#[tokio::test]
async fn a_dead_change_replayed_after_its_original_is_delivered_is_queued() {
    suite::a_dead_change_replayed_after_its_original_is_delivered_is_queued(&Postgres::new().await)
        .await;
}

#[tokio::test]
async fn an_unmatched_update_only_postback_is_replayed_once_the_conversion_exists() {
    suite::an_unmatched_update_only_postback_is_replayed_once_the_conversion_exists(
        &Postgres::new().await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shared_rate_limit_holds_across_two_instances() {
    let url = pg::fresh_db().await;
    let (a, b) = (instance(&url).await, instance(&url).await);
    let (per_second, burst) = (20, 5);
    let window = Duration::from_millis(1500);
    let limits = [
        a.shared_limit("scaleo.global", per_second, burst).unwrap(),
        b.shared_limit("scaleo.global", per_second, burst).unwrap(),
    ];
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for limit in limits.iter().chain(limits.iter()) {
        let limit = limit.clone();
        tasks.spawn(async move {
            let mut granted = 0;
            loop {
                limit.acquire().await.unwrap();
                if start.elapsed() >= window {
                    return granted;
                }
                granted += 1;
            }
        });
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r.unwrap();
    }
    // Together never more than the burst plus the rate over the window (one cell of slack
    // for the database's clock starting a hair before ours), and clearly more than one
    // instance's share.
    let ceiling = burst as usize + (per_second as usize * 3 / 2) + 1;
    assert!(
        total <= ceiling,
        "{total} cells in {window:?}, at most {ceiling}"
    );
    assert!(total >= 15, "only {total} cells in {window:?}");
}

#[tokio::test]
async fn a_connect_error_names_the_url_without_its_password() {
    let mut cfg = store_config(&std::env::temp_dir());
    cfg.url = Some("postgres://relay:s3cret-pw@127.0.0.1:1/relay".into());
    let err = Store::connect(&cfg)
        .await
        .err()
        .expect("nothing listens on port 1");
    let text = format!("{err:#} {err:?}");
    assert!(!text.contains("s3cret-pw"), "{text}");
    assert!(text.contains("relay:***@127.0.0.1:1"), "{text}");
    cfg.url = Some("mysql://relay@127.0.0.1/relay".into());
    assert!(matches!(
        Store::connect(&cfg).await,
        Err(StoreError::Url { .. })
    ));
}

/// Two instances take postbacks of one delivered conversion at once while both forward: the
/// outcomes are those of one serial order (no two postbacks decided against the same state),
/// two changes of the conversion are never in flight at once, and what is sent, in order,
/// leaves Scaleo with the conversion's latest state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_of_one_conversion_on_two_instances_are_decided_and_sent_one_at_a_time()
{
    let url = pg::fresh_db().await;
    let (a, b) = (instance(&url).await, instance(&url).await);
    let start = json!({"conv_status": "pending", "revenue": 0});
    let id = stored_id(
        a.insert(suite::conversion("c1", start.clone()))
            .await
            .unwrap(),
    );
    let mut create = suite::claim_all(&a).await;
    assert_eq!(create.len(), 1);
    create
        .pop()
        .unwrap()
        .delivered(suite::attempt(Some(200), "{}"), None, Some("\"L\"".into()))
        .await
        .unwrap();
    let statuses = ["hold", "pending", "hold", "approved", "pending", "rejected"];
    let mut inserts = tokio::task::JoinSet::new();
    for k in 0..30 {
        let store = if k % 2 == 0 { a.clone() } else { b.clone() };
        let fields = json!({"conv_status": statuses[k % statuses.len()], "revenue": k % 4});
        inserts.spawn(async move {
            let got = store.insert(suite::conversion("c1", fields.clone())).await;
            (fields, got.unwrap())
        });
    }
    let done = Arc::new(AtomicBool::new(false));
    let in_flight: Arc<Mutex<Option<i64>>> = Arc::default();
    let sent: Arc<Mutex<Vec<Value>>> = Arc::default();
    let mut claimers = tokio::task::JoinSet::new();
    for store in [&a, &b, &a, &b] {
        let (store, done) = (store.clone(), done.clone());
        let (in_flight, sent) = (in_flight.clone(), sent.clone());
        claimers.spawn(async move {
            loop {
                let claimed = store.claim(4, Duration::from_secs(60), &[]).await.unwrap();
                if claimed.is_empty() {
                    if done.load(Ordering::SeqCst) {
                        return;
                    }
                    // Pacing: an idle claimer polls again soon, as the forwarder does.
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    continue;
                }
                for c in &claimed {
                    assert_eq!(c.change().map(|o| o.original), Some(id));
                    let mut now = in_flight.lock().unwrap();
                    assert!(
                        now.is_none(),
                        "changes {now:?} and {} of one conversion in flight at once",
                        c.id()
                    );
                    *now = Some(c.id());
                }
                for c in claimed {
                    // Scenario: the send takes a moment, so the other claimers run meanwhile.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    sent.lock()
                        .unwrap()
                        .push(serde_json::from_str(c.body()).unwrap());
                    // Out of flight before the settle commits: only then may the next go.
                    *in_flight.lock().unwrap() = None;
                    c.delivered(suite::attempt(Some(200), "{}"), None, None)
                        .await
                        .unwrap();
                }
            }
        });
    }
    let mut answers = Vec::new();
    while let Some(r) = inserts.join_next().await {
        answers.push(r.unwrap());
    }
    done.store(true, Ordering::SeqCst);
    while let Some(r) = claimers.join_next().await {
        r.unwrap();
    }
    assert!(a.pending_sources().await.unwrap().is_empty());
    // The records of one conversion's postbacks are written in the order they were decided:
    // deciding them again in id order gives the same answers.
    let record = |i: &Inserted| match i {
        Inserted::Duplicate { id, .. }
        | Inserted::Update { id, .. }
        | Inserted::Stale { id, .. } => *id,
        other => panic!("{other:?}"),
    };
    answers.sort_by_key(|(_, i)| record(i));
    let mut current = lifecycle::tracked(start.as_object().unwrap());
    let transitions = Transitions::default();
    for (fields, got) in &answers {
        match (
            lifecycle::decide(&current, fields.as_object().unwrap(), &transitions),
            got,
        ) {
            (Decision::Duplicate, Inserted::Duplicate { original, .. }) => {
                assert_eq!(*original, id)
            }
            (Decision::Stale { reason }, Inserted::Stale { reason: r, .. }) => {
                assert_eq!(&reason, r)
            }
            (Decision::Update { change }, Inserted::Update { route, .. }) => {
                assert_eq!(*route, ChangeRoute::Queued);
                current = lifecycle::overlay(&current, [&change]);
            }
            (want, got) => panic!("{fields}: decided {got:?}, serially {want:?}\n{answers:?}"),
        }
    }
    // Scaleo received the changes in order and ends with the latest state.
    let sent = sent.lock().unwrap();
    let bodies: Vec<Map<String, Value>> = sent
        .iter()
        .map(|v| v.as_object().unwrap().clone())
        .collect();
    let at_scaleo = lifecycle::overlay(start.as_object().unwrap(), &bodies);
    assert_eq!(lifecycle::tracked(&at_scaleo), current, "sent {sent:?}");
}

/// A CA and a server certificate it signs for `localhost` and 127.0.0.1 (PEM): the CA, the
/// server certificate, the server key.
fn certificates(ca_name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut server =
        CertificateParams::new(vec!["db.relay.test".into(), "127.0.0.1".into()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "db.relay.test");
    let cert = server.signed_by(&key, &issuer).unwrap();
    (ca_pem, cert.pem(), key.serialize_pem())
}

const TLS_PASSWORD: &str = "tls-s3cret";

/// The server with TLS (and a password) shared by the TLS tests, and its CA file.
struct TlsBed {
    server: pg::PrivateServer,
    ca_file: std::path::PathBuf,
    other_ca_file: std::path::PathBuf,
}

static TLS_BED: tokio::sync::OnceCell<TlsBed> = tokio::sync::OnceCell::const_new();

async fn tls_bed() -> &'static TlsBed {
    TLS_BED
        .get_or_init(async || {
            let (ca, cert, key) = certificates("relay test CA");
            let (other_ca, _, _) = certificates("someone else's CA");
            let server = pg::PrivateServer::new(pg::Options {
                tls: Some((cert, key)),
                password: Some(TLS_PASSWORD.into()),
            })
            .await;
            let dir = tempfile::tempdir().unwrap().keep();
            let (ca_file, other_ca_file) = (dir.join("ca.pem"), dir.join("other-ca.pem"));
            std::fs::write(&ca_file, ca).unwrap();
            std::fs::write(&other_ca_file, other_ca).unwrap();
            TlsBed {
                server,
                ca_file,
                other_ca_file,
            }
        })
        .await
}

/// Connects with `url` (and `store.ca_file`), returning the error text if it fails.
async fn connect_with(url: &str, ca_file: Option<&std::path::Path>) -> Result<Store, String> {
    let mut cfg = store_config(&std::env::temp_dir());
    cfg.url = Some(url.to_string());
    cfg.ca_file = ca_file.map(std::path::Path::to_path_buf);
    Store::connect(&cfg).await.map_err(|e| e.to_string())
}

/// Whether every relay connection to the database of `url` is encrypted (seen by the server).
async fn relay_connections_encrypted(bed: &TlsBed, url: &str) -> (i64, i64) {
    let db = url.split('?').next().unwrap().rsplit('/').next().unwrap();
    let admin = format!(
        "host=127.0.0.1 port={} user=relay password={TLS_PASSWORD} dbname=postgres",
        bed.server.port()
    );
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.datname = $1 \
             AND a.application_name = 'postback-relay'",
            &[&db],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verify_full_with_the_right_ca_connects_and_stores() {
    let bed = tls_bed().await;
    let url = bed.server.fresh_db().await;
    let ca = bed.ca_file.display();
    for (url, ca_file) in [
        // The CA in the URL, as libpq reads it, or in store.ca_file.
        (format!("{url}?sslmode=verify-full&sslrootcert={ca}"), None),
        (
            format!("{url}?sslmode=verify-full"),
            Some(bed.ca_file.as_path()),
        ),
        (format!("{url}?sslmode=verify-ca"), Some(&bed.ca_file)),
    ] {
        let store = connect_with(&url, ca_file)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let id = stored_id(store.insert(queued("acme", "tls1", None)).await.unwrap());
        assert!(store.get(id).await.unwrap().is_some());
        let (all, encrypted) = relay_connections_encrypted(bed, &url).await;
        assert!(
            all >= 1 && encrypted == all,
            "{encrypted} of {all} encrypted"
        );
        drop(store);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_require_encrypts_without_a_ca() {
    let bed = tls_bed().await;
    let url = format!("{}?sslmode=require", bed.server.fresh_db().await);
    let store = connect_with(&url, None).await.unwrap();
    store.insert(queued("acme", "req1", None)).await.unwrap();
    let (all, encrypted) = relay_connections_encrypted(bed, &url).await;
    assert!(
        all >= 1 && encrypted == all,
        "{encrypted} of {all} encrypted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_wrong_ca_or_host_name_is_refused_as_not_trusted() {
    let bed = tls_bed().await;
    let url = bed.server.fresh_db().await;
    let wrong = format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        bed.other_ca_file.display()
    );
    let err = connect_with(&wrong, None).await.err().expect("refused");
    assert!(err.contains("certificate was not trusted"), "{err}");
    assert!(
        err.contains(&bed.other_ca_file.display().to_string()),
        "{err}"
    );
    assert!(!err.contains(TLS_PASSWORD), "{err}");
    // `require` with a CA file checks the chain, as libpq's does.
    let err = connect_with(&format!("{url}?sslmode=require"), Some(&bed.other_ca_file))
        .await
        .err()
        .expect("refused");
    assert!(err.contains("certificate was not trusted"), "{err}");
    // The right CA, but the certificate does not name the host connected to ("localhost").
    let by_name = url.replace("127.0.0.1", "localhost");
    let err = connect_with(
        &format!("{by_name}?sslmode=verify-full"),
        Some(&bed.ca_file),
    )
    .await
    .err()
    .expect("refused");
    assert!(
        err.contains("not valid for the host name localhost"),
        "{err}"
    );
    // verify-ca does not check the name.
    connect_with(&format!("{by_name}?sslmode=verify-ca"), Some(&bed.ca_file))
        .await
        .unwrap();
    // A CA that is not a file fails before any connection, naming it.
    let err = connect_with(
        &format!("{url}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"),
        None,
    )
    .await
    .err()
    .expect("refused");
    assert!(
        err.contains("CA file /nonexistent/ca.pem: cannot read it"),
        "{err}"
    );
}

#[tokio::test]
async fn tls_required_of_a_server_without_tls_fails_clearly() {
    let url = format!("{}?sslmode=require", pg::fresh_db().await);
    let err = connect_with(&url, None).await.err().expect("refused");
    assert!(err.contains("does not offer TLS"), "{err}");
    // The default (prefer) falls back to plain TCP there, as libpq does.
    connect_with(&url.replace("require", "prefer"), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_wrong_password_says_authentication_failed_for_whom_and_where() {
    let bed = tls_bed().await;
    let url = bed
        .server
        .fresh_db()
        .await
        .replace(TLS_PASSWORD, "not-the-password");
    let err = connect_with(&url, None).await.err().expect("refused");
    let port = bed.server.port();
    assert!(
        err.contains(&format!(
            "authentication failed for user relay at 127.0.0.1:{port}"
        )),
        "{err}"
    );
    assert!(!err.contains("not-the-password"), "{err}");
    let no_password = url.replace(":not-the-password", "");
    let err = connect_with(&no_password, None)
        .await
        .err()
        .expect("refused");
    assert!(
        err.contains("authentication failed for user relay"),
        "{err}"
    );
}

#[tokio::test]
async fn a_repeat_of_a_stored_reject_is_counted_on_it_within_the_window() {
    suite::a_repeat_of_a_stored_reject_is_counted_on_it_within_the_window(&Postgres::new().await)
        .await;
}

#[tokio::test]
async fn an_original_refused_after_a_fold_takes_the_folded_change_back() {
    suite::an_original_refused_after_a_fold_takes_the_folded_change_back(&Postgres::new().await)
        .await;
}

#[tokio::test]
async fn a_change_scaleo_refused_is_taken_back_out_of_the_memory() {
    suite::a_change_scaleo_refused_is_taken_back_out_of_the_memory(&Postgres::new().await).await;
}

#[tokio::test]
async fn a_repeat_of_an_unmatched_update_only_postback_is_counted_on_it() {
    suite::a_repeat_of_an_unmatched_update_only_postback_is_counted_on_it(&Postgres::new().await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ends_keep_each_conversion_memory() {
    suite::concurrent_ends_keep_each_conversion_memory(&Postgres::new().await).await;
}

// Group commit: concurrent inserts and settles share transactions.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_inserts_dedupe_exactly_and_every_answer_is_stored() {
    let db = Postgres::new().await;
    suite::many_concurrent_inserts_dedupe_exactly_and_every_answer_is_stored(&db).await;
    // The first postbacks of the keys were grouped: far fewer transactions than records.
    // (A duplicate or a change is decided alone after its group.)
    let client = sql(&db.url).await;
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT xmin::text) FROM records
             WHERE state = 'queued' AND source = 'acme' AND click_id LIKE 'c%'",
            &[],
        )
        .await
        .unwrap();
    let (records, transactions): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(records, 108);
    assert!(
        transactions < records / 2,
        "{records} records in {transactions} transactions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_settles_all_land() {
    suite::concurrent_settles_all_land(&Postgres::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_row_fails_alone_and_its_neighbours_are_stored() {
    let url = pg::fresh_db().await;
    let store = instance(&url).await;
    let mut admin = sql(&url).await;
    // A record the database refuses: a trigger raises for one marked query.
    admin
        .batch_execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.query LIKE '%poison%' THEN RAISE EXCEPTION 'poisoned row'; END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_poison BEFORE INSERT ON records
               FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
        )
        .await
        .unwrap();
    // The table is held, so the first groups wait and the other postbacks pile up into one
    // group with the bad one.
    let hold = admin.transaction().await.unwrap();
    hold.batch_execute("LOCK TABLE records IN SHARE MODE")
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let store = store.clone();
        tasks.spawn(async move {
            let click = if i == 63 {
                "poison".to_string()
            } else {
                format!("c{i}")
            };
            let key = format!("k{i}");
            (
                i,
                store
                    .insert(queued("acme", &click, Some((&key, suite::DAY))))
                    .await,
            )
        });
    }
    let waiting = wait::until(Duration::from_secs(10), async || {
        let row = hold
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND datname = current_database()",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0) >= 1
    })
    .await;
    assert!(waiting, "no insert waited for the table");
    hold.commit().await.unwrap();
    let mut stored = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (i, answer) = r.unwrap();
        if i == 63 {
            let err = answer.unwrap_err();
            assert!(err.to_string().contains("poisoned row"), "{err}");
        } else {
            stored.push(stored_id(
                answer.unwrap_or_else(|e| panic!("postback {i}: {e}")),
            ));
        }
    }
    assert_eq!(stored.len(), 63);
    for id in stored {
        assert_eq!(
            store.get(id).await.unwrap().unwrap().summary.state,
            State::Queued
        );
    }
    assert_eq!(
        store.counts_by_state().await.unwrap(),
        vec![(State::Queued, 63)]
    );
    // The bad postback's key was not kept: sent again without the mark, it is stored.
    let again = store
        .insert(queued("acme", "c63", Some(("k63", suite::DAY))))
        .await
        .unwrap();
    stored_id(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_inserting_the_same_keys_concurrently_dedupe_exactly() {
    let url = pg::fresh_db().await;
    let (a, b) = (instance(&url).await, instance(&url).await);
    let make = |i: usize| {
        queued(
            "acme",
            &format!("c{i}"),
            Some((&format!("k{}", i % 60), suite::DAY)),
        )
    };
    let (on_a, on_b) = tokio::join!(
        suite::insert_concurrently(&a, 240, 32, make),
        suite::insert_concurrently(&b, 240, 32, make),
    );
    let answers: Vec<(usize, Inserted)> = on_a
        .into_iter()
        .chain(on_b)
        .map(|(i, r)| (i, r.unwrap_or_else(|e| panic!("postback {i}: {e}"))))
        .collect();
    let holders = suite::one_holder_per_key(&a, &answers, |i| format!("k{}", i % 60)).await;
    assert_eq!(holders.len(), 60);
    let mut counts = b.counts_by_state().await.unwrap();
    counts.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(counts, [(State::Duplicate, 420), (State::Queued, 60)]);
}
