-- Items a broker hands out whole (pool servers, ports): one owner each, so that two replicas
-- never hand out the same item.
CREATE TABLE osb_claims (
    pool VARCHAR(64) NOT NULL,
    item VARCHAR(255) NOT NULL,
    platform VARCHAR(64) NOT NULL,
    owner_id VARCHAR(255) NOT NULL,
    claimed_at BIGINT NOT NULL,
    PRIMARY KEY (pool, item)
);
