-- MySQL/MariaDB only: the tables of the recovery migration compare ids byte for byte too.
ALTER TABLE osb_catalogs CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE osb_instance_facts CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
