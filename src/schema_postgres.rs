// @generated automatically by Diesel CLI.

diesel::table! {
    jobs (id) {
        id -> Int8,
        queue -> Text,
        state -> Text,
        priority -> Int4,
        payload -> Jsonb,
        attempts -> Int4,
        max_attempts -> Int4,
        run_at -> Timestamptz,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        worker_id -> Nullable<Text>,
        heartbeat_at -> Nullable<Timestamptz>,
        lease_expires_at -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        unique_key -> Nullable<Text>,
        cancel_requested_at -> Nullable<Timestamptz>,
        attempt_base -> Int4,
        timeout_ms -> Nullable<Int8>,
        progress -> Nullable<Jsonb>,
    }
}

diesel::table! {
    paused_queues (queue) {
        queue -> Text,
        paused_at -> Timestamptz,
    }
}

diesel::table! {
    results (id) {
        id -> Int8,
        job_id -> Int8,
        attempt -> Int4,
        outcome -> Text,
        output -> Nullable<Jsonb>,
        error -> Nullable<Text>,
        created_at -> Timestamptz,
        duration_ms -> Int8,
        worker_id -> Nullable<Text>,
    }
}

diesel::table! {
    schedules (name) {
        name -> Text,
        last_tick -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(results -> jobs (job_id));

diesel::allow_tables_to_appear_in_same_query!(jobs, paused_queues, results, schedules,);
