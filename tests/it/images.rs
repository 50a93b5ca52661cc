//! Images: deleted with their object and metadata, and stored in S3 (moto) or Azure Blob (Azurite) and read back
//! through the API whole, by range, revalidated and through a signed redirect.

use crate::support::{Options, Reply, download, generate_body, kv, start, storage_env};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

#[sqlx::test(migrations = "./migrations")]
async fn delete_removes_object_metadata_and_row(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let r = stack
        .post("/api/v1/generate", generate_body("short-lived"), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.body["images"][0]["id"]
        .as_str()
        .expect("image id")
        .to_owned();
    let day = chrono::Utc::now().format("%Y/%m/%d").to_string();
    let file = stack.storage_dir.join(&day).join(format!("{id}.png"));
    assert!(file.exists());
    let del = Reply::from(
        stack
            .http
            .delete(stack.url(&format!("/api/v1/images/{id}")))
            .send()
            .await
            .expect("delete"),
    )
    .await;
    assert_eq!(del.status, 200, "{}", del.body);
    assert!(!file.exists() && !file.with_extension("json").exists());
    stack
        .get(&format!("/api/v1/images/{id}"))
        .await
        .assert_error(404, "not_found");
    stack
        .get(&format!("/api/v1/images/{id}/download"))
        .await
        .assert_error(404, "not_found");
    let again = Reply::from(
        stack
            .http
            .delete(stack.url(&format!("/api/v1/images/{id}")))
            .send()
            .await
            .expect("delete"),
    )
    .await;
    again.assert_error(404, "not_found");
}

/// Several pictures in one answer (stored together: one intent statement, the objects written at once): each is
/// its own object with its sidecar, whole and as hashed, and no intent is left once the job succeeded.
#[sqlx::test(migrations = "./migrations")]
async fn several_pictures_of_one_answer_are_each_stored_whole(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let r = stack
        .post(
            "/api/v1/generate",
            serde_json::json!({"prompt": "three kites", "model": "gpt-image-2", "size": "1024x1024",
                "num_images": 3}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let images = r.body["images"].as_array().expect("images");
    assert_eq!(images.len(), 3, "{}", r.body);
    let day = chrono::Utc::now().format("%Y/%m/%d").to_string();
    let mut ids = std::collections::HashSet::new();
    for image in images {
        let id = image["id"].as_str().expect("id");
        assert!(ids.insert(id.to_owned()), "ids repeat: {}", r.body);
        let file = stack.storage_dir.join(&day).join(format!("{id}.png"));
        assert!(
            file.exists() && file.with_extension("json").exists(),
            "{id}"
        );
        let (status, _, bytes) = download(&stack, image["url"].as_str().expect("url")).await;
        assert_eq!(status, 200);
        assert_eq!(
            Some(hex::encode(Sha256::digest(&bytes)).as_str()),
            image["sha256"].as_str()
        );
    }
    let job = r.body["job_id"].as_str().expect("job id");
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pending_objects WHERE job_id::text = $1")
            .bind(job)
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(pending, 0, "intents left after success");
}

/// A job stored in S3 or Azure and read back through the API: whole, by range, revalidated, then (signed mode) by
/// redirect to a pre-signed URL, and deleted.
async fn a_job_is_stored_and_served_from(pool: &PgPool, backend: &str) {
    let env = storage_env(backend);
    let mut stack = start(
        pool,
        Options {
            api_env: env.clone(),
            worker_env: env.clone(),
            ..Options::default()
        },
    )
    .await;
    let r = stack
        .post("/api/v1/generate", generate_body("stored far away"), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let url = r.body["images"][0]["url"].as_str().expect("url").to_owned();
    let sha = r.body["images"][0]["sha256"]
        .as_str()
        .expect("sha")
        .to_owned();
    let (status, headers, bytes) = download(&stack, &url).await;
    assert_eq!(status, 200);
    assert_eq!(hex::encode(Sha256::digest(&bytes)), sha);
    assert_eq!(
        headers["content-length"].to_str().ok(),
        Some(bytes.len().to_string().as_str())
    );
    assert_eq!(headers["accept-ranges"], "bytes");

    let part = stack
        .http
        .get(&url)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .expect("range");
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"].to_str().ok(),
        Some(format!("bytes 10-19/{}", bytes.len()).as_str())
    );
    assert_eq!(part.bytes().await.expect("bytes"), bytes[10..20]);
    let beyond = stack
        .http
        .get(&url)
        .header("Range", format!("bytes={}-", bytes.len()))
        .send()
        .await
        .expect("range");
    assert_eq!(beyond.status(), 416);
    let unchanged = stack
        .http
        .get(&url)
        .header("If-None-Match", format!("\"{sha}\""))
        .send()
        .await
        .expect("revalidate");
    assert_eq!(unchanged.status(), 304);

    // Direct downloads: the API redirects to a short-lived pre-signed URL on the same storage.
    stack
        .restart_api_with(&[kv("STORAGE_PUBLIC_URLS", "signed")])
        .await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    // The API moved to a new port.
    let path = url
        .split_once("/api/")
        .map(|(_, p)| format!("/api/{p}"))
        .expect("path");
    let url = stack.url(&path);
    let redirect = no_redirects.get(&url).send().await.expect("download");
    assert_eq!(redirect.status(), 307);
    let location = redirect.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert!(!location.contains("/api/v1/"), "{location}");
    let direct = no_redirects
        .get(&location)
        .send()
        .await
        .expect("signed URL");
    assert_eq!(direct.status(), 200, "{location}");
    assert_eq!(
        hex::encode(Sha256::digest(direct.bytes().await.expect("bytes"))),
        sha
    );

    let image_id = url.rsplit('/').nth(1).expect("image id").to_owned();
    let deleted = stack
        .http
        .delete(stack.url(&format!("/api/v1/images/{image_id}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 200);
    let gone = no_redirects
        .get(&location)
        .send()
        .await
        .expect("signed URL");
    assert_eq!(gone.status(), 404, "the object itself is gone");
}

#[sqlx::test(migrations = "./migrations")]
async fn a_job_is_stored_in_s3_and_served_through_the_api(pool: PgPool) {
    a_job_is_stored_and_served_from(&pool, "s3").await;
}

#[sqlx::test(migrations = "./migrations")]
async fn a_job_is_stored_in_azure_blob_and_served_through_the_api(pool: PgPool) {
    a_job_is_stored_and_served_from(&pool, "azure").await;
}
