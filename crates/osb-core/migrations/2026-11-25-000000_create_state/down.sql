DROP TABLE osb_operations;
DROP TABLE osb_bindings;
DROP TABLE osb_instances;
