//! The test harness's own PostgreSQL server: what is committed survives a crash, what is not
//! committed does not, and the server takes writes again after crash recovery.

use crate::common;

use common::pg::OwnPostgres;

#[tokio::test]
async fn committed_rows_survive_a_crash_and_the_server_accepts_writes_after_recovery() {
    let mut pg = OwnPostgres::start();
    assert!(pg.url().starts_with("postgres://postgres@127.0.0.1:"));
    assert!(pg.url().ends_with("/panopticon"));

    let client = common::connect(&pg.url()).await;
    client
        .batch_execute(
            "CREATE TABLE survivors (id bigint PRIMARY KEY, note text NOT NULL);
             INSERT INTO survivors SELECT g, 'committed' FROM generate_series(1, 1000) g;",
        )
        .await
        .expect("create and fill the table");
    // A transaction still open when the server dies.
    let open = common::connect(&pg.url()).await;
    open.batch_execute("BEGIN; INSERT INTO survivors VALUES (5000, 'uncommitted');")
        .await
        .expect("open transaction");

    pg.crash();
    assert!(
        client.query_one("SELECT 1", &[]).await.is_err(),
        "the server still answered after the crash"
    );

    pg.restart();
    assert!(
        pg.log().contains("automatic recovery in progress"),
        "the restart did not go through crash recovery; server log {}:\n{}",
        pg.log_path().display(),
        pg.log()
    );
    let client = common::connect(&pg.url()).await;
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE note = 'uncommitted') FROM survivors",
            &[],
        )
        .await
        .expect("read after recovery");
    let (rows, uncommitted): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(rows, 1000, "committed rows lost in the crash");
    assert_eq!(uncommitted, 0, "an uncommitted row survived the crash");

    client
        .execute("INSERT INTO survivors VALUES (1001, 'after recovery')", &[])
        .await
        .expect("write after recovery");
    let after: i64 = client
        .query_one("SELECT count(*) FROM survivors", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(after, 1001);

    // A clean stop and start keep the rows too, on the same port.
    let port = pg.port();
    drop(client);
    pg.stop();
    assert!(!pg.is_running());
    pg.restart();
    assert_eq!(pg.port(), port);
    assert_eq!(
        pg.psql("panopticon", "SELECT count(*) FROM survivors")
            .trim(),
        "1001"
    );
}
