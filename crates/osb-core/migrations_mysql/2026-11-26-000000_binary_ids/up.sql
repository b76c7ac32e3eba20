-- MySQL/MariaDB only: ids are compared byte for byte, as on SQLite and PostgreSQL. The default
-- collations fold case, so `ABC` and `abc` would be one instance here and two elsewhere.
ALTER TABLE osb_instances CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE osb_bindings CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE osb_operations CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE osb_leases CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
