// The tables of `migrations/`, for diesel's query builder.

diesel::table! {
    osb_instances (id) {
        id -> Varchar,
        platform -> Varchar,
        service_id -> Varchar,
        plan_id -> Varchar,
        fingerprint -> Varchar,
        state -> Varchar,
        operation_id -> Varchar,
        parameters -> Text,
        context -> Text,
        maintenance_version -> Nullable<Varchar>,
        dashboard_url -> Nullable<Text>,
        metadata -> Nullable<Text>,
        broker_state -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    osb_bindings (id) {
        id -> Varchar,
        instance_id -> Varchar,
        platform -> Varchar,
        service_id -> Varchar,
        plan_id -> Varchar,
        fingerprint -> Varchar,
        state -> Varchar,
        operation_id -> Varchar,
        parameters -> Text,
        response -> Nullable<Text>,
        credentials -> Nullable<Text>,
        broker_state -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    osb_operations (id) {
        id -> Varchar,
        platform -> Varchar,
        instance_id -> Varchar,
        binding_id -> Nullable<Varchar>,
        kind -> Varchar,
        state -> Varchar,
        fingerprint -> Varchar,
        description -> Nullable<Text>,
        instance_usable -> Nullable<Bool>,
        update_repeatable -> Nullable<Bool>,
        owner -> Varchar,
        heartbeat_at -> BigInt,
        created_at -> BigInt,
        updated_at -> BigInt,
        runner -> Varchar,
        request -> Nullable<Text>,
    }
}

diesel::table! {
    osb_leases (name) {
        name -> Varchar,
        owner -> Varchar,
        expires_at -> BigInt,
    }
}

diesel::table! {
    osb_catalogs (etag) {
        etag -> Varchar,
        first_served -> BigInt,
    }
}

diesel::table! {
    osb_instance_facts (instance_id) {
        instance_id -> Varchar,
        facts -> Text,
        measured_at -> BigInt,
    }
}

diesel::table! {
    osb_claims (pool, item) {
        pool -> Varchar,
        item -> Varchar,
        platform -> Varchar,
        owner_id -> Varchar,
        claimed_at -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    osb_instances,
    osb_bindings,
    osb_operations,
    osb_instance_facts,
);
