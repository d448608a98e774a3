// @generated automatically by Diesel CLI.

diesel::table! {
    jobs (id) {
        id -> Bigint,
        #[max_length = 255]
        queue -> Varchar,
        #[max_length = 16]
        state -> Varchar,
        priority -> Integer,
        payload -> Longtext,
        attempts -> Integer,
        max_attempts -> Integer,
        run_at -> Datetime,
        created_at -> Datetime,
        updated_at -> Datetime,
        worker_id -> Nullable<Text>,
        heartbeat_at -> Nullable<Datetime>,
        lease_expires_at -> Nullable<Datetime>,
        last_error -> Nullable<Text>,
        #[max_length = 1024]
        unique_key -> Nullable<Varchar>,
        cancel_requested_at -> Nullable<Datetime>,
        attempt_base -> Integer,
        timeout_ms -> Nullable<Bigint>,
        progress -> Nullable<Longtext>,
        #[max_length = 32]
        live_unique_key -> Nullable<Binary>,
    }
}

diesel::table! {
    paused_queues (queue) {
        #[max_length = 255]
        queue -> Varchar,
        paused_at -> Datetime,
    }
}

diesel::table! {
    results (id) {
        id -> Bigint,
        job_id -> Bigint,
        attempt -> Integer,
        #[max_length = 16]
        outcome -> Varchar,
        output -> Nullable<Longtext>,
        error -> Nullable<Text>,
        created_at -> Datetime,
        duration_ms -> Bigint,
        worker_id -> Nullable<Text>,
    }
}

diesel::table! {
    schedules (name) {
        #[max_length = 255]
        name -> Varchar,
        last_tick -> Datetime,
        updated_at -> Datetime,
    }
}

diesel::joinable!(results -> jobs (job_id));

diesel::allow_tables_to_appear_in_same_query!(jobs, paused_queues, results, schedules,);
