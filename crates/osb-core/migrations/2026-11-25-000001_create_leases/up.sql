-- Leases elect one replica for work that needs doing once, not once per replica.
CREATE TABLE osb_leases (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    owner VARCHAR(64) NOT NULL,
    expires_at BIGINT NOT NULL
);
