//! examples/kafka_async.rs as a test: a millpond instance's whole life inside a tokio runtime
//! with a real Kafka `StreamConsumer` (Kafka of `scripts/services`; without `KAFKA_BROKERS`
//! the test fails).

#[path = "../examples/kafka_async.rs"]
mod example;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_life_inside_tokio_with_a_stream_consumer() {
    let brokers = std::env::var("KAFKA_BROKERS").expect(
        "KAFKA_BROKERS is not set: start Kafka with `eval \"$(scripts/services up kafka)\"`",
    );
    let dir = tempfile::tempdir().unwrap();
    let summary = example::run(&brokers, dir.path()).await.unwrap();
    eprintln!("{summary}");
}
