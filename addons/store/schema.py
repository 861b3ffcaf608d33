"""DuckDB schema. Table names match Coder's so existing queries keep working.

No foreign keys: DuckDB's FK checks make batched appends and retention
deletes slower and order-dependent; the writer keeps references consistent
by writing an interception before its children in the same transaction.
"""

SCHEMA_VERSION = 1

DDL: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS users (
        id          UUID PRIMARY KEY,
        name        VARCHAR NOT NULL UNIQUE,
        created_at  TIMESTAMPTZ NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS api_keys (
        id            VARCHAR PRIMARY KEY,      -- public id, also the visible prefix
        user_id       UUID NOT NULL,
        key_hash      VARCHAR NOT NULL UNIQUE,  -- sha256 hex of the whole secret
        admin         BOOLEAN NOT NULL DEFAULT false,
        created_at    TIMESTAMPTZ NOT NULL,
        expires_at    TIMESTAMPTZ,
        revoked_at    TIMESTAMPTZ,
        last_used_at  TIMESTAMPTZ
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS aibridge_interceptions (
        id                 UUID PRIMARY KEY,
        initiator_id       UUID NOT NULL,
        api_key_id         VARCHAR,
        provider           VARCHAR NOT NULL,
        provider_name      VARCHAR NOT NULL,
        model              VARCHAR,
        client             VARCHAR NOT NULL DEFAULT 'Unknown',
        client_session_id  VARCHAR,
        thread_parent_id   UUID,
        thread_root_id     UUID,
        credential_kind    VARCHAR NOT NULL,
        credential_hint    VARCHAR,
        started_at         TIMESTAMPTZ NOT NULL,
        ended_at           TIMESTAMPTZ,
        status             VARCHAR,
        metadata           JSON
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS aibridge_token_usages (
        interception_id           UUID NOT NULL,
        provider_response_id      VARCHAR,
        input_tokens              BIGINT NOT NULL,
        output_tokens             BIGINT NOT NULL,
        cache_read_input_tokens   BIGINT NOT NULL DEFAULT 0,
        cache_write_input_tokens  BIGINT NOT NULL DEFAULT 0,
        metadata                  JSON,
        created_at                TIMESTAMPTZ NOT NULL,
        cost_usd                  DOUBLE  -- NULL when the model has no known price
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS aibridge_user_prompts (
        interception_id       UUID NOT NULL,
        provider_response_id  VARCHAR,
        prompt                VARCHAR NOT NULL,
        created_at            TIMESTAMPTZ NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS aibridge_tool_usages (
        interception_id        UUID NOT NULL,
        provider_response_id   VARCHAR,
        provider_tool_call_id  VARCHAR,
        provider_item_id       VARCHAR,
        tool                   VARCHAR NOT NULL,
        input                  VARCHAR,
        server_url             VARCHAR,
        injected               BOOLEAN NOT NULL DEFAULT false,
        invocation_error       VARCHAR,
        created_at             TIMESTAMPTZ NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS aibridge_model_thoughts (
        interception_id  UUID NOT NULL,
        content          VARCHAR NOT NULL,
        metadata         JSON,
        created_at       TIMESTAMPTZ NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS aigw_schema (
        version INTEGER NOT NULL
    )
    """,
    # Governance (addons/store/governance.py): limits, budgets and model allowlists.
    # NULL everywhere means "not set here" (fall back to the group or the gateway's defaults).
    """
    CREATE TABLE IF NOT EXISTS aigw_groups (
        name        VARCHAR PRIMARY KEY,
        budget_usd  DOUBLE,            -- per member and budget period
        models      VARCHAR,           -- comma-separated glob allowlist
        created_at  TIMESTAMPTZ NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS aigw_group_members (
        group_name  VARCHAR NOT NULL,
        user_id     UUID NOT NULL,
        added_at    TIMESTAMPTZ NOT NULL   -- one row per (group_name, user_id), kept so by add_member
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS aigw_user_limits (
        user_id      UUID PRIMARY KEY,
        budget_usd   DOUBLE,           -- overrides the groups' budgets
        rpm          INTEGER,
        tpm          BIGINT,
        max_streams  INTEGER,
        models       VARCHAR,
        updated_at   TIMESTAMPTZ NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS aigw_key_limits (
        key_id       VARCHAR PRIMARY KEY,
        rpm          INTEGER,
        tpm          BIGINT,
        max_streams  INTEGER,
        models       VARCHAR
    )
    """,
    # Daily rollup for the report (addons/store/rollup.py): derived data, rebuilt from the
    # tables above whenever a day's interception count no longer matches.
    """
    CREATE TABLE IF NOT EXISTS aigw_rollup_days (
        day            DATE NOT NULL,
        interceptions  BIGINT NOT NULL,  -- count when rolled up; a mismatch means stale
        built_at       TIMESTAMPTZ NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS aigw_rollup_usage (
        day                 DATE NOT NULL,
        initiator_id        UUID NOT NULL,
        provider            VARCHAR NOT NULL,
        provider_name       VARCHAR NOT NULL,
        model               VARCHAR,
        client              VARCHAR NOT NULL,
        requests            BIGINT NOT NULL,
        failed              BIGINT NOT NULL,
        cancelled           BIGINT NOT NULL,
        input_tokens        BIGINT NOT NULL,
        output_tokens       BIGINT NOT NULL,
        cache_read_tokens   BIGINT NOT NULL,
        cache_write_tokens  BIGINT NOT NULL,
        total_tokens        BIGINT NOT NULL,
        cost_usd            DOUBLE,
        unpriced_responses  BIGINT NOT NULL,
        unpriced_requests   BIGINT NOT NULL,
        unpriced_tokens     BIGINT NOT NULL,
        tool_calls          BIGINT NOT NULL,
        tool_errors         BIGINT NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS aigw_rollup_sessions (
        day           DATE NOT NULL,
        initiator_id  UUID NOT NULL,
        session_id    VARCHAR NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS aigw_rollup_tools (
        day        DATE NOT NULL,
        tool       VARCHAR NOT NULL,
        client     VARCHAR NOT NULL,
        calls      BIGINT NOT NULL,
        errors     BIGINT NOT NULL,
        mcp_calls  BIGINT NOT NULL
    )
    """,
)

# Tables whose rows belong to one interception (retention deletes them together).
CHILD_TABLES: tuple[str, ...] = (
    "aibridge_token_usages",
    "aibridge_user_prompts",
    "aibridge_tool_usages",
    "aibridge_model_thoughts",
)


def _lake_flavour(stmt: str) -> str:
    """DuckLake has no PRIMARY KEY/UNIQUE constraints: the writers keep those columns unique."""
    return stmt.replace(" PRIMARY KEY", "").replace(" UNIQUE", "")


# schema.DDL for a DuckLake catalog (addons/store/lake.py).
LAKE_DDL: tuple[str, ...] = tuple(_lake_flavour(stmt) for stmt in DDL)
