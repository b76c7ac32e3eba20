DROP TABLE osb_leases;
