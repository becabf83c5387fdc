#!/usr/bin/env python3
"""WAL pages written per stored postback by the SQLite store's schema (no Rust build needed).

Builds a store with the migrations of src/store/sqlite/schema.rs, fills it with PRE tracked
Keitaro-like conversions (the bench's postbacks: a random click id and order id each), then
commits BATCHES groups of BATCH inserts the way the writer does (the dedupe lookup, the records
row, the dedupe row) with automatic checkpoints off, and reports the WAL frames each commit
appended. Every frame is one page written and synced before the 200, and later copied back by
a checkpoint: with random keys each index costs about one page per postback once the table
is much larger than a group. CPU per row is Python's and only comparable between variants.

    python3 bench/wal_pages.py                       # the current schema
    python3 bench/wal_pages.py --drop records_click  # without an index, to price it
    python3 bench/wal_pages.py --lookup keitaro:order_id   # plus a refund URL's lookup index
    python3 bench/wal_pages.py --migrations 2        # the schema after the first 2 migrations (at least 2)

The SQL below mirrors src/store/sqlite/ops.rs (insert, insert_plain, remember); keep it in
step when those change.
"""

import argparse
import os
import random
import re
import sqlite3
import string
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def migrations():
    text = open(os.path.join(ROOT, "src/store/sqlite/schema.rs")).read()
    body = text[text.index("const MIGRATIONS") : text.index("];\n\n/// Settings")]
    return re.findall(r'r#"(.*?)"#', body, re.S)


def rid():
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=10))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pre", type=int, default=100_000, help="conversions stored first")
    ap.add_argument("--batch", type=int, default=64, help="inserts per commit (64 connections)")
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--migrations", type=int, default=None, help="apply only the first N")
    ap.add_argument("--drop", default="", help="comma-separated indexes to drop")
    ap.add_argument("--lookup", action="append", default=[], help="SOURCE:COLUMN lookup index")
    ap.add_argument("--page-size", type=int, default=None, help="PRAGMA page_size of a new store")
    a = ap.parse_args()
    if a.migrations is not None and a.migrations < 2:
        ap.error("--migrations: at least 2 (the insert writes the dedupe columns of migration 2)")

    tmp = tempfile.mkdtemp(prefix="wal_pages.")
    path = os.path.join(tmp, "relay.db")
    c = sqlite3.connect(path, isolation_level=None)
    if a.page_size:
        c.execute(f"PRAGMA page_size={a.page_size}")
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=FULL")
    for sql in migrations()[: a.migrations]:
        c.executescript(sql)
    for name in filter(None, a.drop.split(",")):
        c.execute(f'DROP INDEX "{name}"')
    for spec in a.lookup:
        source, col = spec.split(":")
        c.execute(
            f'CREATE INDEX "dedupe_lookup:{col}:{source}" ON dedupe ({col}, expires_at) '
            f"WHERE source = '{source}' AND tracked IS NOT NULL AND {col} IS NOT NULL"
        )
    c.execute("PRAGMA wal_autocheckpoint=0")
    clock = [1_700_000_000_000]

    def insert():
        clock[0] += 1
        now = clock[0]
        click, order = rid(), "T-" + rid()
        query = f"subid={click}&status=sale&revenue=25.00&currency=usd&tid={order}"
        body = (
            '{"click_id":"%s","conv_status":"approved","revenue":25,"adv_param1":"USD",'
            '"adv_order_id":"%s"}' % (click, order)
        )
        key = f"keitaro\x1f{click}\x1f\x1f\x1f{order}"
        c.execute(
            "SELECT d.record_id, d.expires_at, (SELECT r.state FROM records r "
            "WHERE r.id = d.record_id) FROM dedupe d WHERE d.key = ?",
            (key,),
        ).fetchall()
        c.execute(
            "INSERT INTO records (source, state, received_at, queued_at, updated_at, method, "
            "path, query, client_ip, user_agent, referer, body, click_id, reason, dedupe_key, "
            "original_id, next_attempt_at) VALUES ('keitaro', 'queued', ?1, ?1, ?1, 'GET', "
            "'/postback/keitaro', ?2, '127.0.0.1', NULL, NULL, ?3, ?4, NULL, ?5, NULL, ?1)",
            (now, query, body, click, key),
        )
        record = c.execute("SELECT last_insert_rowid()").fetchone()[0]
        c.execute(
            "INSERT INTO dedupe (key, record_id, expires_at, source, click_id, order_id, tracked) "
            "VALUES (?, ?, ?, 'keitaro', ?, ?, '{\"conv_status\":\"approved\",\"revenue\":\"25\"}') "
            "ON CONFLICT (key) DO UPDATE SET record_id = excluded.record_id",
            (key, record, now + 30 * 86_400_000, click, order),
        )

    c.execute("BEGIN")
    for _ in range(a.pre):
        insert()
    c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = c.execute("PRAGMA page_size").fetchone()[0]
    wal = path + "-wal"
    before = os.path.getsize(wal) if os.path.exists(wal) else 0
    cpu = time.process_time()
    for _ in range(a.batches):
        c.execute("BEGIN IMMEDIATE")
        for _ in range(a.batch):
            insert()
        c.execute("COMMIT")
    cpu = time.process_time() - cpu
    frames = (os.path.getsize(wal) - before) / (page + 24)
    rows = a.batches * a.batch
    print(
        f"WAL pages per commit of {a.batch}: {frames / a.batches:.1f}; per postback: "
        f"{frames / rows:.2f} of {page} bytes ({frames * (page + 24) / rows / 1024:.1f} KiB); "
        f"python CPU per postback {cpu / rows * 1e6:.0f} us"
    )
    c.close()
    for f in os.listdir(tmp):
        os.remove(os.path.join(tmp, f))
    os.rmdir(tmp)


if __name__ == "__main__":
    main()
