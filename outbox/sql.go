package outbox

import (
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"

	"github.com/busway/busway/middleware"
)

// queries are the statements of one outbox table in one dialect.
type queries struct {
	table, dead, published string
	channel                string // LISTEN/NOTIFY channel (PostgreSQL)
	lockKey                int64  // advisory lock of the relay leader (PostgreSQL)

	migrate             []string
	insert              string
	selectBatch         string // pending rows in id order, LIMIT by placeholder
	deleteIn, archiveIn string // format with the id list (SQLite)
	// PostgreSQL: constant statements taking the ids as ranges of
	// consecutive ids, two text parameters of the same length ('{1,7}' and
	// '{5,9}' for ids 1-5 and 7-9, see pgRanges), so that the driver
	// prepares each once, whatever the ids, and a batch of consecutive ids
	// costs one index range scan instead of one index descent per id. The
	// ranges hold only ids of the list (ids are unique), so no other row is
	// touched, whatever committed in between. finishSelect deletes
	// (finishArchiveSelect archives) the rows of its ranges and reads the
	// next batch in the same statement: one round trip per batch in a
	// backlog.
	deleteAny, archiveAny             string // $1, $2 ranges; archiveAny: $3 published_at
	finishSelect, finishArchiveSelect string // $1, $2 ranges, $3 limit; archive: $4 published_at
	// selectAhead reads the batches after the rows being published, in id
	// order, LIMIT $2. PostgreSQL: the rows not in $1 (their id list,
	// '{1,2,3}'), since a row of a lower id may commit later. SQLite: the
	// rows of ids above ? (their highest): its writers commit one at a
	// time, so ids commit in order, and AUTOINCREMENT never reuses one.
	selectAhead         string
	deadInsert, deadDel string
	pruneArchive        string
	vacuum              string // PostgreSQL: see RelayOptions.VacuumEvery
	stats               string
	probe               string
	// SQLite: the relay lease (Table_lease), see Relay.lead.
	lease, leaseTake, leaseRenew, leaseFree string
	notify                                  string
}

func indexBase(t string) string { return t[strings.LastIndexByte(t, '.')+1:] }

func newQueries(d middleware.Dialect, table string) queries {
	p := func(i int) string {
		if d == middleware.PostgreSQL {
			return "$" + strconv.Itoa(i)
		}
		return "?"
	}
	q := queries{table: table, dead: table + "_dead", published: table + "_published"}
	h := fnv.New64a()
	h.Write([]byte("busway.outbox.relay:" + table))
	q.lockKey = int64(h.Sum64())
	q.channel = strings.ReplaceAll(table, ".", "_")

	id, blob := "BIGSERIAL PRIMARY KEY", "BYTEA"
	if d == middleware.SQLite {
		// AUTOINCREMENT: ids are never reused, also after the newest rows
		// were deleted (the archive table is keyed by them).
		id, blob = "INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB"
	}
	cols := func(idCol string) string {
		return fmt.Sprintf(`id %s,
	topic TEXT NOT NULL,
	msg_key TEXT NOT NULL,
	msg_id TEXT NOT NULL,
	headers %s NOT NULL,
	body %s NOT NULL,
	created_at BIGINT NOT NULL`, idCol, blob, blob)
	}
	q.migrate = []string{
		fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (\n\t%s\n)", q.table, cols(id)),
		fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (\n\t%s,\n\tfailed_at BIGINT NOT NULL,\n\terror TEXT NOT NULL\n)", q.dead, cols("BIGINT PRIMARY KEY")),
		fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (\n\t%s,\n\tpublished_at BIGINT NOT NULL\n)", q.published, cols("BIGINT PRIMARY KEY")),
		fmt.Sprintf("CREATE INDEX IF NOT EXISTS %s_published_at ON %s (published_at)", indexBase(q.published), q.published),
	}
	all := "id, topic, msg_key, msg_id, headers, body, created_at"
	q.insert = fmt.Sprintf("INSERT INTO %s (topic, msg_key, msg_id, headers, body, created_at) VALUES (%s, %s, %s, %s, %s, %s)",
		q.table, p(1), p(2), p(3), p(4), p(5), p(6))
	// The relay reads only what it sends (created_at is for the stats).
	read := "id, topic, msg_key, msg_id, headers, body"
	q.selectBatch = fmt.Sprintf("SELECT %s FROM %s ORDER BY id LIMIT %s", read, q.table, p(1))
	// The id lists are integers the relay read; formatting them into the
	// statement avoids both a parameter limit (SQLite) and array types.
	q.deleteIn = "DELETE FROM " + q.table + " WHERE id IN (%s)"
	q.archiveIn = fmt.Sprintf("INSERT INTO %s (%s, published_at) SELECT %s, %s FROM %s WHERE id IN (%%s)", q.published, all, all, p(1), q.table)
	if d == middleware.PostgreSQL {
		del := fmt.Sprintf("DELETE FROM %s AS t USING unnest($1::text::bigint[], $2::text::bigint[]) AS r(lo, hi) WHERE t.id BETWEEN r.lo AND r.hi", q.table)
		tall := "t." + strings.ReplaceAll(all, ", ", ", t.")
		q.deleteAny = del
		q.archiveAny = fmt.Sprintf("WITH d AS (%s RETURNING %s) INSERT INTO %s (%s, published_at) SELECT %s, $3 FROM d",
			del, tall, q.published, all, all)
		// The statement's SELECT sees the table as it was before its DELETE
		// (one snapshot): it leaves out the rows the DELETE returns (a
		// hashed subplan).
		next := fmt.Sprintf("SELECT %s FROM %s WHERE id NOT IN (SELECT id FROM d) ORDER BY id LIMIT $3", read, q.table)
		q.selectAhead = fmt.Sprintf("SELECT %s FROM %s WHERE id NOT IN (SELECT unnest($1::text::bigint[])) ORDER BY id LIMIT $2", read, q.table)
		q.finishSelect = fmt.Sprintf("WITH d AS (%s RETURNING t.id) %s", del, next)
		q.finishArchiveSelect = fmt.Sprintf("WITH d AS (%s RETURNING %s), a AS (INSERT INTO %s (%s, published_at) SELECT %s, $4 FROM d) %s",
			del, tall, q.published, all, all, next)
	} else {
		q.selectAhead = fmt.Sprintf("SELECT %s FROM %s WHERE id > ? ORDER BY id LIMIT ?", read, q.table)
	}
	q.deadInsert = fmt.Sprintf("INSERT INTO %s (%s, failed_at, error) SELECT %s, %s, %s FROM %s WHERE id = %s", q.dead, all, all, p(1), p(2), q.table, p(3))
	q.deadDel = fmt.Sprintf("DELETE FROM %s WHERE id = %s", q.table, p(1))
	q.pruneArchive = fmt.Sprintf("DELETE FROM %s WHERE published_at < %s", q.published, p(1))
	q.vacuum = "VACUUM (SKIP_LOCKED) " + q.table
	q.stats = fmt.Sprintf("SELECT count(*), COALESCE(min(created_at), 0) FROM %s", q.table)
	if d == middleware.SQLite {
		q.lease = table + "_lease"
		q.migrate = append(q.migrate, fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (\n\tname TEXT PRIMARY KEY,\n\towner TEXT NOT NULL,\n\texpires_at BIGINT NOT NULL\n)", q.lease))
		// Taken when free, expired, or already ours; one statement, so
		// two relays cannot both take it.
		q.leaseTake = fmt.Sprintf("INSERT INTO %s (name, owner, expires_at) VALUES ('relay', ?, ?) ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at WHERE %s.owner = excluded.owner OR %s.expires_at < ?",
			q.lease, indexBase(q.lease), indexBase(q.lease))
		q.leaseRenew = fmt.Sprintf("UPDATE %s SET expires_at = ? WHERE name = 'relay' AND owner = ?", q.lease)
		q.leaseFree = fmt.Sprintf("UPDATE %s SET expires_at = 0 WHERE name = 'relay' AND owner = ?", q.lease)
	}
	q.probe = fmt.Sprintf("SELECT (SELECT count(*) FROM %s WHERE 1 = 0) + (SELECT count(*) FROM %s WHERE 1 = 0) + (SELECT count(*) FROM %s WHERE 1 = 0)", q.table, q.dead, q.published)
	if q.lease != "" {
		q.probe += fmt.Sprintf(" + (SELECT count(*) FROM %s WHERE 1 = 0)", q.lease)
	}
	q.notify = "SELECT pg_notify(" + p(1) + ", '')"
	return q
}

func idList(ids []int64) string {
	b := make([]byte, 0, len(ids)*8)
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, id, 10)
	}
	return string(b)
}

// pgRanges returns ids (in any order, no duplicates) as ranges of
// consecutive ids: the PostgreSQL array literals of their first and of
// their last ids ('{1,7}' and '{5,9}' for 1-5 and 7-9).
// pgArray formats ids as a PostgreSQL array literal, '{1,2,3}'.
func pgArray(ids []int64) string { return "{" + idList(ids) + "}" }

func pgRanges(ids []int64) (lo, hi string) {
	s := slices.Clone(ids)
	slices.Sort(s)
	l := make([]byte, 1, 2+len(s)*4)
	h := make([]byte, 1, 2+len(s)*4)
	l[0], h[0] = '{', '{'
	for i := 0; i < len(s); {
		j := i + 1
		for j < len(s) && s[j] == s[j-1]+1 {
			j++
		}
		if i > 0 {
			l, h = append(l, ','), append(h, ',')
		}
		l, h = strconv.AppendInt(l, s[i], 10), strconv.AppendInt(h, s[j-1], 10)
		i = j
	}
	return string(append(l, '}')), string(append(h, '}'))
}
