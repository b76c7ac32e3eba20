-- Portable SQL: the same statements run on SQLite, MariaDB/MySQL and PostgreSQL.
-- Times are Unix milliseconds; JSON documents are TEXT; secrets are sealed before they get here.
CREATE TABLE osb_instances (
    id VARCHAR(128) NOT NULL PRIMARY KEY,
    platform VARCHAR(64) NOT NULL,
    service_id VARCHAR(255) NOT NULL,
    plan_id VARCHAR(255) NOT NULL,
    fingerprint VARCHAR(64) NOT NULL,
    state VARCHAR(32) NOT NULL,
    operation_id VARCHAR(64) NOT NULL,
    parameters TEXT NOT NULL,
    context TEXT NOT NULL,
    maintenance_version VARCHAR(255),
    dashboard_url TEXT,
    metadata TEXT,
    broker_state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE osb_bindings (
    id VARCHAR(128) NOT NULL PRIMARY KEY,
    instance_id VARCHAR(128) NOT NULL,
    platform VARCHAR(64) NOT NULL,
    service_id VARCHAR(255) NOT NULL,
    plan_id VARCHAR(255) NOT NULL,
    fingerprint VARCHAR(64) NOT NULL,
    state VARCHAR(32) NOT NULL,
    operation_id VARCHAR(64) NOT NULL,
    parameters TEXT NOT NULL,
    response TEXT,
    credentials TEXT,
    broker_state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX osb_bindings_instance ON osb_bindings (instance_id);

CREATE TABLE osb_operations (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    platform VARCHAR(64) NOT NULL,
    instance_id VARCHAR(128) NOT NULL,
    binding_id VARCHAR(128),
    kind VARCHAR(16) NOT NULL,
    state VARCHAR(16) NOT NULL,
    fingerprint VARCHAR(64) NOT NULL,
    description TEXT,
    instance_usable BOOLEAN,
    update_repeatable BOOLEAN,
    owner VARCHAR(64) NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX osb_operations_instance ON osb_operations (instance_id);
CREATE INDEX osb_operations_state ON osb_operations (state, heartbeat_at);
