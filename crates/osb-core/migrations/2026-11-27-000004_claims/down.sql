DROP TABLE osb_claims;
