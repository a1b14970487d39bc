// @generated automatically by Diesel CLI.

diesel::table! {
    kafka_offsets (consumer_group, topic, partition) {
        consumer_group -> Text,
        topic -> Text,
        partition -> Int4,
        next_offset -> Int8,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    system_metrics (time) {
        time -> Timestamptz,
        service -> Text,
        pod_name -> Text,
        cpu -> Float8,
        memory -> Float8,
        namespace -> Text,
        node_name -> Text,
    }
}

diesel::allow_tables_to_appear_in_same_query!(kafka_offsets, system_metrics,);
