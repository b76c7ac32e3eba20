-- Crash recovery re-drives unfinished operations: what to run again, and which process runs it.
-- `runner` is the process (replica id and a start nonce) that may write the operation's end;
-- `request` is what the operation needs to run again (JSON; NULL for rows made before this).
ALTER TABLE osb_operations ADD COLUMN runner VARCHAR(128) NOT NULL DEFAULT '';
ALTER TABLE osb_operations ADD COLUMN request TEXT;
-- When each catalog (by its entity tag) was first served by any replica: its Last-Modified,
-- the same on every replica of one store.
CREATE TABLE osb_catalogs (
    etag VARCHAR(64) NOT NULL PRIMARY KEY,
    first_served BIGINT NOT NULL
);
-- What the last upkeep pass measured of each instance (`metadata` of GET), and when: GET answers
-- from here, never from the backend.
CREATE TABLE osb_instance_facts (
    instance_id VARCHAR(128) NOT NULL PRIMARY KEY,
    facts TEXT NOT NULL,
    measured_at BIGINT NOT NULL
);
