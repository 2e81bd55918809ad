"""The fleet's telemetry store (issue 12, item 4): SQLite by default (one file, WAL), PostgreSQL
where configured. One interface, the same tables:

    st = open_store('sqlite:///path/fleet.db')  or  open_store('postgresql://user@127.0.0.1:5432/db')
    st.add(batch)            # [(kind, dev, payload bytes, received unix s)], one transaction
    st.devices()             # the fleet table: one row per device (latest of everything)
    st.history(dev, t0, t1)  # telemetry rows of one device
    st.net_load(dev, t0, t1) # (ts, gcp_w + bat_w): what the site draws without the battery (forecasts)

kind: 'telemetry' (bess/<id>/telemetry), 'status' (bess/<id>/status: online / offline, the will),
'schedule' (bess/<id>/schedule/status). Telemetry rows keep the record's main fields as columns
(docs/telemetry.md: W, bp, the record's own time from ts_ms, state) and the whole record as JSON,
once per (device, time, seq); a record that is not JSON is counted, not stored; device text is
cut and cleaned (no NUL, no lone surrogate) before a database sees it. The devices table is updated
from the same batch: telemetry columns from the newest record only; online / offline only from
the status topic (the will), schedule status only from its topic, each in arrival order (one
ingest instance holds those subscriptions: tools/fleet/ingest.py).
"""
import json
import os
import sqlite3

TELEMETRY_COLS = ('dev', 'seq', 'ts', 'gcp_w', 'bat_w', 'soc_bp', 'state', 'reserve_bp', 'sch_version', 'rec')
DEVICE_COLS = ('dev', 'online', 'last_seen', 'soc_bp', 'state', 'gcp_w', 'bat_w', 'reserve_bp', 'sch_version',
               'sch_status', 'sch_acked', 'sch_reason', 'alarms')

LATEST_COLS = ('last_seen', 'last_seq', 'soc_bp', 'state', 'gcp_w', 'bat_w', 'reserve_bp', 'sch_version', 'alarms')
SCHEMA_VERSION = 3                  # 3: devices.last_seq (the newest record: a later seq counts too)
SCHEMA = [
    "CREATE TABLE IF NOT EXISTS schema_version (v INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS telemetry (dev TEXT NOT NULL, seq BIGINT, ts BIGINT NOT NULL,
       gcp_w BIGINT, bat_w BIGINT, soc_bp BIGINT, state TEXT, reserve_bp BIGINT, sch_version BIGINT,
       rec TEXT NOT NULL)""",
    # one row per record: a store-and-forward backlog sent again after a lost ack is not doubled
    "CREATE UNIQUE INDEX IF NOT EXISTS telemetry_dev_ts_seq ON telemetry (dev, ts, seq)",
    """CREATE TABLE IF NOT EXISTS devices (dev TEXT PRIMARY KEY, online INTEGER, last_seen BIGINT,
       soc_bp BIGINT, state TEXT, gcp_w BIGINT, bat_w BIGINT, reserve_bp BIGINT, sch_version BIGINT,
       sch_status TEXT, sch_acked BIGINT, sch_reason TEXT, alarms TEXT, last_seq BIGINT)""",
]


def _int(v):
    return v if isinstance(v, int) and not isinstance(v, bool) and -2 ** 62 < v < 2 ** 62 else None


def _text(v, n):
    """A device-supplied value as text a database takes: at most n characters, no NUL, no lone
    surrogate (it arrived as JSON: anything goes)."""
    if v is None:
        return None
    t = v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))
    return t[:n].replace('\x00', '').encode('utf-8', 'replace').decode('utf-8')


def _alarms(r):
    """What needs an operator's eye in a record: its "alarms", else the error counters that are
    not zero (the firmware's "err": failed meter / battery calls, ...), else None."""
    a = r.get('alarms')
    if not a:
        e = r.get('err')
        a = {k: v for k, v in e.items() if v} if isinstance(e, dict) else None
    return _text(a, 500) if a else None


def _newer(ts, seq, last_ts, last_seq):
    """A record is newer than the device row's when its time is later, or its seq is later: a
    device's clock may step back at a wall-clock sync (a board that booted on a clock ahead of NTP)
    and its seq keeps counting; a reboot restarts seq and its time goes on (docs/fleet.md). In the
    same second (the row keeps whole seconds) the later seq wins, and a record without seq."""
    if last_ts is None or ts > last_ts:
        return True
    if seq is None or last_seq is None:
        return ts == last_ts
    return seq > last_seq or (ts == last_ts and seq == last_seq)


def _ts(r, t):
    """The record's time, unix s: ts_ms (the firmware's records, docs/telemetry.md) or ts; the
    time it was received when it has neither (a store-and-forward backlog keeps its own times)."""
    ms = _int(r.get('ts_ms'))
    if ms is not None and ms > 10 ** 11:
        return ms // 1000
    return _int(r.get('ts')) or int(t)


def rows(batch):
    """(telemetry rows, device updates {dev: {col: value}}, rejected count) from a batch."""
    tel, dev, bad = [], {}, 0
    for kind, d, payload, t in batch:
        u = dev.setdefault(d, {})
        if kind == 'status':
            u['online'] = 1 if payload == b'online' else 0
            continue
        try:
            r = json.loads(payload)
            if not isinstance(r, dict):
                raise ValueError
        except ValueError:
            bad += 1
            continue
        if kind == 'telemetry':
            sch = r.get('sch') if isinstance(r.get('sch'), dict) else {}
            ts = _ts(r, t)
            st = r.get('state')
            row = (d, _int(r.get('seq')), ts, _int(r.get('gcp_w')), _int(r.get('bat_w')), _int(r.get('soc_bp')),
                   _text(st, 20) if isinstance(st, (str, int)) else None, _int(r.get('reserve_bp')),
                   _int(sch.get('version')), json.dumps(r, separators=(',', ':')))     # (ASCII: \u escapes)
            tel.append(row)
            if _newer(ts, row[1], u.get('last_seen'), u.get('last_seq')):     # the newest record wins
                u.update(last_seen=ts, last_seq=row[1], soc_bp=row[5], state=row[6], gcp_w=row[3], bat_w=row[4], reserve_bp=row[7],
                         sch_version=row[8], alarms=_alarms(r))
        elif kind == 'schedule':
            u['sch_status'] = _text(r.get('status'), 20)
            u['sch_acked'] = _int(r.get('version'))
            lr = r.get('last_rejected') if isinstance(r.get('last_rejected'), dict) else {}
            reason = r.get('reason') or lr.get('reason')
            u['sch_reason'] = _text(reason, 200) if reason else None
    return tel, dev, bad


class StoreError(RuntimeError):
    pass


DOWN = ('OperationalError', 'InterfaceError')  # the database's trouble, not the message's (retry)


class _Store:
    ph = '?'                        # the driver's parameter placeholder

    def __init__(self):
        self.bad = 0
        self.stored = 0

    def _schema(self, cur, have_telemetry):
        """Create the tables; a schema-2 database gains devices.last_seq; refuse one another store
        made (its rows are kept as they are: move it away or point --db elsewhere)."""
        if have_telemetry:
            try:
                cur.execute('SELECT v FROM schema_version')
                row = cur.fetchone()
            except Exception:
                row = None
            if row is not None and row[0] == 2:             # 2 -> 3: one column, NULL until a record
                cur.execute('ALTER TABLE devices ADD COLUMN last_seq BIGINT')
                cur.execute('UPDATE schema_version SET v = %d' % SCHEMA_VERSION)
                row = (SCHEMA_VERSION,)
            if row is None or row[0] != SCHEMA_VERSION:
                raise StoreError('the database was made by another version of tools/fleet/store.py (schema %s, '
                                 'this one is %d): nothing changed; move it away or use another --db'
                                 % (row[0] if row else 1, SCHEMA_VERSION))
        for q in SCHEMA:
            cur.execute(q)
        cur.execute('SELECT COUNT(*) FROM schema_version')
        if cur.fetchone()[0] == 0:
            cur.execute('INSERT INTO schema_version (v) VALUES (%d)' % SCHEMA_VERSION)

    def _upsert_sql(self, cols):
        """One device row: the telemetry columns only from a record newer than the stored one
        (instances of a shared subscription commit their batches in any order)."""
        p = ', '.join([self.ph] * len(cols))
        newer = ('devices.last_seen IS NULL OR excluded.last_seen > devices.last_seen OR '      # = _newer()
                 '(excluded.last_seen = devices.last_seen AND (excluded.last_seq IS NULL OR devices.last_seq IS NULL '
                 'OR excluded.last_seq >= devices.last_seq)) OR excluded.last_seq > devices.last_seq')
        upd = ', '.join(('%s = CASE WHEN %s THEN excluded.%s ELSE devices.%s END' % (c, newer, c, c))
                        if 'last_seen' in cols and c in LATEST_COLS else '%s = excluded.%s' % (c, c)
                        for c in cols if c != 'dev')
        return 'INSERT INTO devices (%s) VALUES (%s) ON CONFLICT (dev) DO UPDATE SET %s' % (', '.join(cols), p, upd)

    def add(self, batch):
        tel, dev, bad = rows(batch)
        self.bad += bad
        new = 0
        with self._tx() as cur:
            if tel:
                cur.executemany('INSERT INTO telemetry (%s) VALUES (%s) ON CONFLICT DO NOTHING'
                                % (', '.join(TELEMETRY_COLS), ', '.join([self.ph] * len(TELEMETRY_COLS))), tel)
                new = cur.rowcount if cur.rowcount >= 0 else len(tel)   # rows added: not the duplicates
            groups = {}
            for d, u in dev.items():
                if u:
                    cols = ('dev',) + tuple(sorted(u))
                    groups.setdefault(cols, []).append((d,) + tuple(u[c] for c in cols[1:]))
            for cols, vals in groups.items():
                cur.executemany(self._upsert_sql(cols), vals)
        self.stored += new
        return len(tel)

    def devices(self):
        with self._tx() as cur:
            cur.execute('SELECT %s FROM devices ORDER BY dev' % ', '.join(DEVICE_COLS))
            return [dict(zip(DEVICE_COLS, r)) for r in cur.fetchall()]

    def history(self, dev, t0, t1):
        with self._tx() as cur:
            cur.execute('SELECT ts, gcp_w, bat_w, soc_bp, state, reserve_bp, sch_version FROM telemetry '
                        'WHERE dev = %s AND ts >= %s AND ts < %s ORDER BY ts' % (self.ph, self.ph, self.ph),
                        (dev, t0, t1))
            return cur.fetchall()

    def net_load(self, dev, t0, t1):
        return [(ts, (g or 0) + (b or 0)) for ts, g, b, *_ in self.history(dev, t0, t1) if g is not None]

    def ping(self):
        """True if the database takes a write now (a refused message is then the message's fault)."""
        try:
            with self._tx() as cur:
                cur.execute('UPDATE schema_version SET v = v')   # takes the write lock (busy: an error)
            return True
        except Exception:
            return False

    def count(self):
        with self._tx() as cur:
            cur.execute('SELECT COUNT(*) FROM telemetry')
            return cur.fetchone()[0]


class _Tx:
    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.cur = self.conn.cursor()
        return self.cur

    def __exit__(self, t, v, tb):
        if t is None:
            self.conn.commit()
        else:
            self.conn.rollback()
        self.cur.close()


class SQLiteStore(_Store):
    def __init__(self, path):
        super().__init__()
        self.conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
        self.conn.execute('PRAGMA journal_mode=WAL')         # readers never block the writer
        self.conn.execute('PRAGMA synchronous=NORMAL')       # durable at checkpoints, fast commits
        cur = self.conn.cursor()
        cur.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'telemetry'")
        self._schema(cur, cur.fetchone()[0] > 0)
        self.conn.commit()

    def _tx(self):
        return _Tx(self.conn)

    def close(self):
        self.conn.close()


class PgStore(_Store):
    ph = '%s'

    def __init__(self, dsn):
        super().__init__()
        import psycopg
        self.dsn = dsn
        self.conn = psycopg.connect(dsn)
        with self._tx() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'telemetry'")
            self._schema(cur, cur.fetchone()[0] > 0)

    def _tx(self):
        if self.conn.closed:                # the server restarted: connect again (raises while it is down)
            import psycopg
            self.conn = psycopg.connect(self.dsn)
        return _Tx(self.conn)

    def close(self):
        self.conn.close()


def open_store(url):
    """sqlite:///path (or a plain path) or postgresql://... (psycopg 3)."""
    if url.startswith('postgresql://') or url.startswith('postgres://'):
        return PgStore(url)
    path = url[len('sqlite:///'):] if url.startswith('sqlite:///') else url
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    return SQLiteStore(path)
