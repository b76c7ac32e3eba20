-- MySQL/MariaDB only: claims compare items and owners byte for byte, as ids everywhere else.
ALTER TABLE osb_claims CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
