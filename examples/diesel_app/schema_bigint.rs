// @generated automatically by Diesel CLI.

diesel::table! {
    jobs (id) {
        id -> BigInt,
        queue -> Text,
        state -> Text,
        priority -> Integer,
        payload -> Text,
        attempts -> Integer,
        max_attempts -> Integer,
        run_at -> Timestamp,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        worker_id -> Nullable<Text>,
        heartbeat_at -> Nullable<Timestamp>,
        lease_expires_at -> Nullable<Timestamp>,
        last_error -> Nullable<Text>,
        unique_key -> Nullable<Text>,
        cancel_requested_at -> Nullable<Timestamp>,
        attempt_base -> Integer,
        timeout_ms -> Nullable<BigInt>,
        progress -> Nullable<Text>,
    }
}

diesel::table! {
    paused_queues (queue) {
        queue -> Text,
        paused_at -> Timestamp,
    }
}

diesel::table! {
    posts (id) {
        id -> BigInt,
        title -> Text,
        body -> Text,
        published -> Bool,
    }
}

diesel::table! {
    results (id) {
        id -> BigInt,
        job_id -> BigInt,
        attempt -> Integer,
        outcome -> Text,
        output -> Nullable<Text>,
        error -> Nullable<Text>,
        created_at -> Timestamp,
        duration_ms -> BigInt,
        worker_id -> Nullable<Text>,
    }
}

diesel::table! {
    schedules (name) {
        name -> Text,
        last_tick -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::joinable!(results -> jobs (job_id));

diesel::allow_tables_to_appear_in_same_query!(jobs, paused_queues, posts, results, schedules,);
