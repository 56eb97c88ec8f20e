"""key policy: one PostgreSQL function runs a whole batch of admits and settles

A batch used to be eight statements or so per key, each a round trip from the server's policy
thread; the function does the same work inside the database, so the server sends one statement
per batch (llmserve/services/policy.py builds its argument and reads its answer). SQLite keeps
the statement-by-statement path: it has no functions, and no round trips to save.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 16:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The argument (built by PolicyService._payload):
#   {"releases": [lease id, ...],
#    "prune": null | {"minutes": ts, "leases": ts},
#    "keys": [{"k": key id, "n": admits, "early": [charge, ...], "late": [charge, ...],
#              "minute": ts, "now": ts, "expires": ts, "leases": [new lease id, ...],
#              "rpm", "tpm", "concurrency", "budget": int | null,
#              "period": "day" | "week" | "month" | null, "period_start": ts | null}, ...]}
#   a charge: [span, starts_at, tokens]; keys in id order, charges in (span, starts_at) order,
#   "early" those up to the key's own minute row, "late" those after it (one lock order for
#   every server).
# The answer: one object per key with admits, in the same order:
#   {"spent": tokens of the budget period, "total": the minute's requests with this batch's,
#    "tokens": the minute's tokens, "live": live leases before this batch's, "granted": admitted}
# The admitted are the first "granted" admits of the key, in arrival order; the server derives
# every refusal's reason and headers from the same numbers with the same rules.
_FUNCTION = """
CREATE OR REPLACE FUNCTION llmserve_policy_batch(batch jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    k jsonb;
    charge jsonb;
    kid bigint;
    n integer;
    minute timestamptz;
    spent bigint;
    total integer;
    used bigint;
    live integer;
    wanted integer;
    granted integer;
    answers jsonb := '[]'::jsonb;
BEGIN
    IF jsonb_array_length(batch -> 'releases') > 0 THEN
        DELETE FROM key_leases
        WHERE id IN (SELECT jsonb_array_elements_text(batch -> 'releases'));
    END IF;
    FOR k IN SELECT value FROM jsonb_array_elements(batch -> 'keys') LOOP
        kid := (k ->> 'k')::bigint;
        n := (k ->> 'n')::integer;
        FOR charge IN SELECT value FROM jsonb_array_elements(k -> 'early') LOOP
            INSERT INTO key_usage AS u (key_id, span, starts_at, requests, tokens)
            VALUES (kid, charge ->> 0, (charge ->> 1)::timestamptz, 0, (charge ->> 2)::bigint)
            ON CONFLICT (key_id, span, starts_at)
            DO UPDATE SET tokens = u.tokens + excluded.tokens;
        END LOOP;
        IF n > 0 THEN
            minute := (k ->> 'minute')::timestamptz;
            spent := 0;
            total := 0;
            used := 0;
            live := 0;
            wanted := n;
            IF k ->> 'budget' IS NOT NULL THEN
                SELECT u.tokens INTO spent FROM key_usage u
                WHERE u.key_id = kid AND u.span = k ->> 'period'
                  AND u.starts_at = (k ->> 'period_start')::timestamptz;
                spent := coalesce(spent, 0);
                IF spent >= (k ->> 'budget')::bigint THEN
                    wanted := 0;
                END IF;
            END IF;
            IF wanted > 0 AND (k ->> 'rpm' IS NOT NULL OR k ->> 'tpm' IS NOT NULL) THEN
                INSERT INTO key_usage AS u (key_id, span, starts_at, requests, tokens)
                VALUES (kid, 'minute', minute, n, 0)
                ON CONFLICT (key_id, span, starts_at)
                DO UPDATE SET requests = u.requests + excluded.requests
                RETURNING u.requests, u.tokens INTO total, used;
                IF k ->> 'tpm' IS NOT NULL AND used >= (k ->> 'tpm')::bigint THEN
                    wanted := 0;
                ELSIF k ->> 'rpm' IS NOT NULL THEN
                    wanted := greatest(0, least(n, (k ->> 'rpm')::integer - (total - n)));
                END IF;
            END IF;
            granted := wanted;
            IF wanted > 0 AND k ->> 'concurrency' IS NOT NULL THEN
                PERFORM 1 FROM api_keys a WHERE a.id = kid FOR UPDATE;
                SELECT count(*) INTO live FROM key_leases l
                WHERE l.key_id = kid AND l.expires_at >= (k ->> 'now')::timestamptz;
                granted := greatest(0, least(wanted, (k ->> 'concurrency')::integer - live));
                INSERT INTO key_leases (id, key_id, expires_at)
                SELECT lease, kid, (k ->> 'expires')::timestamptz
                FROM jsonb_array_elements_text(k -> 'leases') WITH ORDINALITY AS x(lease, i)
                WHERE x.i <= granted;
            END IF;
            IF total > 0 AND granted < n THEN  -- a refused request counts for nothing
                UPDATE key_usage u SET requests = u.requests - (n - granted)
                WHERE u.key_id = kid AND u.span = 'minute' AND u.starts_at = minute;
            END IF;
            answers := answers || jsonb_build_object(
                'spent', spent, 'total', total, 'tokens', used, 'live', live,
                'granted', granted);
        END IF;
        FOR charge IN SELECT value FROM jsonb_array_elements(k -> 'late') LOOP
            INSERT INTO key_usage AS u (key_id, span, starts_at, requests, tokens)
            VALUES (kid, charge ->> 0, (charge ->> 1)::timestamptz, 0, (charge ->> 2)::bigint)
            ON CONFLICT (key_id, span, starts_at)
            DO UPDATE SET tokens = u.tokens + excluded.tokens;
        END LOOP;
    END LOOP;
    IF batch -> 'prune' IS NOT NULL AND jsonb_typeof(batch -> 'prune') = 'object' THEN
        DELETE FROM key_usage
        WHERE span = 'minute' AND starts_at < (batch -> 'prune' ->> 'minutes')::timestamptz;
        DELETE FROM key_leases WHERE expires_at < (batch -> 'prune' ->> 'leases')::timestamptz;
    END IF;
    RETURN answers;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS llmserve_policy_batch(jsonb)")
