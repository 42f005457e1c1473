//! The reconciliation `GET`: what the platform holds for a tenant.

use billsync_emulator::Reason;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn lists_stored_events_in_order_with_paging() {
    // Arrange: the client's default scopes include billing read.
    let app = spawn().await;
    let token = app.token(ACME, None).await;
    let ids: Vec<String> = (0..3).map(|_| fresh_id("rec")).collect();
    for id in &ids {
        assert_eq!(app.post_as(&token, ACME, &batch(&[id])).await.status, 202);
    }

    // Act
    let all = app.list_billing(&token, ACME, "since=2000-01-01T00:00:00Z").await;
    let page = app.list_billing(&token, ACME, "limit=2").await;
    let next = app.list_billing(&token, ACME, "after=2&limit=2").await;
    let future = app.list_billing(&token, ACME, "since=2999-01-01T00:00:00%2B02:00").await;

    // Assert
    assert_eq!(all.status, 200, "{all:?}");
    let listed: Vec<&str> =
        all.json["events"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>());
    let first = &all.json["events"][0];
    assert_eq!(first["event"]["quantity"], "12.500");
    assert_eq!(first["event"]["event_id"], ids[0].as_str());
    assert_eq!(first["seq"], 1);
    assert!(first["received_at"].as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()));
    assert_eq!((page.json["events"].as_array().unwrap().len(), page.json["has_more"].as_bool()), (2, Some(true)));
    assert_eq!(next.json["events"][0]["event_id"], ids[2].as_str());
    assert_eq!(next.json["has_more"], false);
    assert_eq!(future.json["events"], json!([]));
    assert!(all.header("x-ratelimit-limit").is_some());
}

#[tokio::test]
async fn listing_needs_the_read_scope() {
    let app = spawn().await;
    for (scope, reason) in [(BILLING_WRITE, Reason::MissingScope), ("billing:read", Reason::ShortScopeForm)] {
        // Arrange
        let token = app.token(ACME, Some(scope)).await;
        // Act
        let r = app.list_billing(&token, ACME, "").await;
        // Assert
        assert_eq!((r.status, r.error()), (401, "insufficient_claims"), "{scope}");
        assert_eq!(app.last_reasons(), [reason]);
    }
    let token = app.token(ACME, Some(BILLING_READ)).await;
    let bad = app.list_billing(&token, ACME, "limit=0").await;
    assert_eq!((bad.status, bad.error()), (400, "invalid_request"));
}
