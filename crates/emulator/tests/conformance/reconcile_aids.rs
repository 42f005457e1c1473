//! What reconciliation tests need of the platform: accepted events it forgets afterwards (the
//! `lose_after_accept` fault, per tenant) and events another sender posted (the admin insert),
//! both seen through the reconciliation `GET`.

use billsync_emulator::{AdminError, Fault, FaultKind, Reason};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// The event ids of a reconciliation listing, in order.
fn listed_ids(r: &Reply) -> Vec<String> {
    assert_eq!(r.status, 200, "{r:?}");
    r.json["events"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect()
}

fn ids(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|_| fresh_id(prefix)).collect()
}

fn refs(ids: &[String]) -> Vec<&str> {
    ids.iter().map(String::as_str).collect()
}

// --- lose_after_accept ------------------------------------------------------------------------

#[tokio::test]
async fn lost_events_are_accepted_then_missing_and_a_repost_restores_them() {
    // Arrange: the fault through the admin API, at probability 1.0.
    let app = spawn().await;
    let token = app.token(ACME, None).await;
    let lost = ids(3, "lost");
    let fault = json!({"kind": "lose_after_accept", "tenant_id": ACME.2, "trigger": {"probability": 1.0}});
    let injected = app.admin(Method::POST, "/admin/faults", Some(fault)).await;

    // Act
    let posted = app.post_as(&token, ACME, &batch(&refs(&lost))).await;
    let listing = app.list_billing(&token, ACME, "").await;
    let admin_ids = app.admin(Method::GET, &format!("/admin/events/{}", ACME.2), None).await;
    let (held, forgotten, audit) = (app.emu.stored_event_ids(ACME.2), app.emu.lost_event_ids(ACME.2), app.last_audit());
    let cleared = app.admin(Method::DELETE, "/admin/faults", None).await;
    let reposted = app.post_as(&token, ACME, &batch(&refs(&lost))).await;
    let relisted = app.list_billing(&token, ACME, "").await;

    // Assert: the 202 counts them, the platform does not hold them.
    assert_eq!(injected.status, 200, "{injected:?}");
    assert_eq!(injected.json[0]["kind"], "lose_after_accept");
    assert_eq!(injected.json[0]["tenant_id"], ACME.2);
    assert_eq!(posted.status, 202, "{posted:?}");
    assert_eq!(posted.json, json!({"accepted": 3, "duplicates": [], "rejected": []}));
    assert_eq!(listed_ids(&listing), Vec::<String>::new());
    assert!(held.is_empty(), "{held:?}");
    assert_eq!(forgotten, lost);
    assert_eq!(admin_ids.json["event_ids"], json!([]));
    assert_eq!(admin_ids.json["lost_event_ids"], json!(lost));
    assert_eq!((audit.status, audit.reasons.clone()), (202, vec![Reason::InjectedLostAfterAccept]));
    assert!(audit.detail.as_deref().is_some_and(|d| lost.iter().all(|id| d.contains(id.as_str()))), "{audit:?}");
    assert_eq!(cleared.status, 204);
    // A re-post is accepted anew, not a duplicate, and is held this time.
    assert_eq!(reposted.json, json!({"accepted": 3, "duplicates": [], "rejected": []}));
    assert_eq!(listed_ids(&relisted), lost);
    assert_eq!(relisted.json["events"][0]["seq"], 1, "forgotten events took no seq");
    let counters = app.emu.counters();
    assert_eq!((counters.stored(ACME.2), counters.lost_after_accept(ACME.2)), (6, 3));
    assert_eq!(counters.reason(Reason::InjectedLostAfterAccept), 1);
    assert_eq!(app.emu.stored_event_ids(ACME.2), lost);
    assert_eq!(app.emu.lost_event_ids(ACME.2), lost, "the history stays");
}

#[tokio::test]
async fn probability_zero_forgets_nothing() {
    // Arrange
    let app = spawn().await;
    let token = app.token(ACME, None).await;
    let kept = ids(4, "kept");
    app.emu.lose_after_accept(ACME.2, 0.0);

    // Act
    let posted = app.post_as(&token, ACME, &batch(&refs(&kept))).await;
    let again = app.post_as(&token, ACME, &batch(&refs(&kept[..1]))).await;
    let listing = app.list_billing(&token, ACME, "").await;

    // Assert
    assert_eq!(posted.json["accepted"], 4);
    assert_eq!(again.json["duplicates"], json!([kept[0]]));
    assert_eq!(listed_ids(&listing), kept);
    assert_eq!(app.emu.stored_event_ids(ACME.2), kept);
    assert!(app.emu.lost_event_ids(ACME.2).is_empty());
    assert_eq!(app.emu.counters().lost_after_accept(ACME.2), 0);
    assert!(app.emu.audit().is_empty(), "{:?}", app.emu.audit());
    assert_eq!(app.emu.faults().len(), 1, "the fault stays until cleared");
}

#[tokio::test]
async fn the_loss_is_per_tenant() {
    // Arrange
    let app = spawn().await;
    let (acme, globex) = (app.token(ACME, None).await, app.token(GLOBEX, None).await);
    let (acme_ids, globex_ids) = (ids(2, "acme"), ids(2, "globex"));
    app.emu.lose_after_accept(ACME.2, 1.0);

    // Act
    let globex_posted = app.post_as(&globex, GLOBEX, &batch(&refs(&globex_ids))).await;
    let acme_posted = app.post_as(&acme, ACME, &batch(&refs(&acme_ids))).await;

    // Assert
    assert_eq!((globex_posted.json["accepted"].clone(), acme_posted.json["accepted"].clone()), (json!(2), json!(2)));
    assert_eq!(listed_ids(&app.list_billing(&globex, GLOBEX, "").await), globex_ids);
    assert_eq!(listed_ids(&app.list_billing(&acme, ACME, "").await), Vec::<String>::new());
    assert!(app.emu.lost_event_ids(GLOBEX.2).is_empty());
    assert_eq!(app.emu.lost_event_ids(ACME.2), acme_ids);
}

#[tokio::test]
async fn next_n_forgets_exactly_the_next_n_events() {
    // Arrange
    let app = spawn().await;
    let token = app.token(ACME, None).await;
    let (first, second) = (ids(3, "n"), ids(2, "n"));
    app.emu.inject(Fault::next(FaultKind::lose_after_accept(ACME.2), 2));

    // Act
    let one = app.post_as(&token, ACME, &batch(&refs(&first))).await;
    let two = app.post_as(&token, ACME, &batch(&refs(&second))).await;

    // Assert
    assert_eq!((one.json["accepted"].clone(), two.json["accepted"].clone()), (json!(3), json!(2)));
    assert_eq!(app.emu.lost_event_ids(ACME.2), first[..2]);
    let held: Vec<String> = first[2..].iter().chain(&second).cloned().collect();
    assert_eq!(listed_ids(&app.list_billing(&token, ACME, "").await), held);
    assert!(app.emu.faults().is_empty(), "an exhausted next: N is removed");
}

#[tokio::test]
async fn a_lose_after_accept_fault_without_a_tenant_is_refused() {
    // Arrange
    let app = spawn().await;
    // Act
    let r = app
        .admin(Method::POST, "/admin/faults", Some(json!({"kind": "lose_after_accept", "trigger": {"next": 1}})))
        .await;
    // Assert
    assert_eq!((r.status, r.error()), (400, "invalid_request"), "{r:?}");
    assert!(r.json["error_description"].as_str().is_some_and(|d| d.contains("tenant_id")), "{r:?}");
    assert!(app.emu.faults().is_empty());
}

// --- admin insert -----------------------------------------------------------------------------

#[tokio::test]
async fn inserted_events_are_listed_with_seq_and_received_at_and_never_twice() {
    // Arrange: one event posted by billsync, then two "posted by another sender".
    let app = spawn().await;
    let token = app.token(ACME, None).await;
    let posted = fresh_id("own");
    let others = ids(2, "other");
    assert_eq!(app.post_as(&token, ACME, &batch(&[&posted])).await.status, 202);
    let path = format!("/admin/tenants/{}/events", ACME.2);

    // Act
    let inserted = app.admin(Method::POST, &path, Some(batch(&refs(&others)))).await;
    let again = app.admin(Method::POST, &path, Some(batch(&[&others[0], &posted]))).await;
    let by_method = app.emu.insert_events(ACME.2, &[event(&others[1])]).unwrap();
    let listing = app.list_billing(&token, ACME, "since=2000-01-01T00:00:00Z").await;

    // Assert
    assert_eq!(inserted.status, 200, "{inserted:?}");
    assert_eq!(inserted.json["tenant_id"], ACME.2);
    assert_eq!(inserted.json["duplicates"], json!([]));
    let stored = inserted.json["stored"].as_array().unwrap();
    assert_eq!(stored.iter().map(|e| e["seq"].clone()).collect::<Vec<_>>(), [json!(2), json!(3)]);
    assert_eq!(stored[0]["event_id"], others[0].as_str());
    assert_eq!(stored[0]["event"]["quantity"], "12.500");
    assert_eq!((again.status, again.json["stored"].clone()), (200, json!([])));
    assert_eq!(again.json["duplicates"], json!([others[0], posted]));
    assert!(by_method.stored.is_empty());
    assert_eq!(by_method.duplicates, [others[1].clone()]);
    let mut expected = vec![posted.clone()];
    expected.extend(others.iter().cloned());
    assert_eq!(listed_ids(&listing), expected);
    let listed: Vec<&Value> = listing.json["events"].as_array().unwrap().iter().collect();
    assert_eq!(listed[1], &stored[0], "the insert answers the events as the listing shows them");
    assert_eq!(listed[2]["seq"], 3);
    assert!(listed[2]["received_at"].as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()));
    assert_eq!(app.emu.stored_event_ids(ACME.2), expected);
    let counters = app.emu.counters();
    assert_eq!((counters.stored(ACME.2), counters.inserted(ACME.2)), (1, 2));
    // billsync's own post of an inserted id is a duplicate.
    let dup = app.post_as(&token, ACME, &batch(&[&others[1]])).await;
    assert_eq!(dup.json["duplicates"], json!([others[1]]));
}

#[tokio::test]
async fn an_insert_restores_a_lost_event() {
    // Arrange
    let app = spawn().await;
    let token = app.token(ACME, None).await;
    let id = fresh_id("restore");
    app.emu.lose_after_accept(ACME.2, 1.0);
    assert_eq!(app.post_as(&token, ACME, &batch(&[&id])).await.json["accepted"], 1);
    // Act
    let inserted = app.emu.insert_events(ACME.2, &[event(&id)]).unwrap();
    // Assert: faults do not apply to inserts.
    assert_eq!(inserted.stored.len(), 1);
    assert_eq!((inserted.stored[0].seq, inserted.stored[0].event_id.as_str()), (1, id.as_str()));
    assert_eq!(listed_ids(&app.list_billing(&token, ACME, "").await), [id]);
}

#[tokio::test]
async fn a_bad_inserted_event_is_refused_naming_the_field_and_nothing_is_stored() {
    // Arrange
    let app = spawn().await;
    let path = format!("/admin/tenants/{}/events", ACME.2);
    let good = fresh_id("good");
    let mut numeric = event(&fresh_id("bad"));
    numeric["quantity"] = json!(12.5);
    let mut attribute = event(&fresh_id("bad"));
    attribute["attributes"] = json!({"site": 7});
    let mut unknown = event(&fresh_id("bad"));
    unknown["colour"] = json!("red");
    app.emu.reject_meter("water.volume", "meter_not_registered");
    let mut refused_meter = event(&fresh_id("bad"));
    refused_meter["meter"] = json!("water.volume");

    // Act
    let quantity = app.admin(Method::POST, &path, Some(json!({"events": [event(&good), numeric]}))).await;
    let attr = app.admin(Method::POST, &path, Some(json!({"events": [attribute]}))).await;
    let shape = app.admin(Method::POST, &path, Some(json!({"events": [unknown]}))).await;
    let meter = app.admin(Method::POST, &path, Some(json!({"events": [refused_meter]}))).await;
    let not_a_list = app.admin(Method::POST, &path, Some(json!({"events": event(&good)}))).await;
    let extra = app.admin(Method::POST, &path, Some(json!({"events": [], "tenant": "x"}))).await;
    let by_method = app.emu.insert_events(ACME.2, &[event(&good), json!({"event_id": "x:1", "device_id": ""})]);

    // Assert
    let description = |r: &Reply| {
        assert_eq!((r.status, r.error()), (400, "invalid_request"), "{r:?}");
        r.json["error_description"].as_str().unwrap().to_owned()
    };
    assert!(description(&quantity).starts_with("events[1].quantity: expected a decimal string"), "{quantity:?}");
    assert!(description(&attr).starts_with("events[0].attributes.site: expected a string"), "{attr:?}");
    assert!(description(&shape).starts_with("events[0]: unknown field \"colour\""), "{shape:?}");
    assert!(description(&meter).starts_with("events[0].meter: meter water.volume is not registered"), "{meter:?}");
    assert!(description(&not_a_list).contains("expected a sequence"), "{not_a_list:?}");
    assert!(description(&extra).contains("tenant"), "{extra:?}");
    match by_method {
        Err(AdminError::InvalidEvent { index, field, reason }) => {
            assert_eq!((index, field.as_str(), reason.as_str()), (1, "events[1].device_id", "must not be empty"));
        }
        other => panic!("expected InvalidEvent, got {other:?}"),
    }
    assert!(app.emu.stored_event_ids(ACME.2).is_empty(), "all or nothing");
    assert_eq!(app.emu.counters().inserted(ACME.2), 0);
}

#[tokio::test]
async fn the_insert_route_is_refused_without_admin_access() {
    // Arrange
    let app = spawn().await;
    let url = app.url(&format!("/admin/tenants/{}/events", ACME.2));
    let body = batch(&[&fresh_id("sneak")]);
    let send = |key: Option<&str>, host: Option<&str>| {
        let mut req = app.http.post(&url).json(&body);
        if let Some(k) = key {
            req = req.header("x-admin-key", k.to_owned());
        }
        if let Some(h) = host {
            req = req.header("host", h.to_owned());
        }
        req.send()
    };

    // Act
    let without_key = Reply::read(send(None, None).await.unwrap()).await;
    let wrong_key = Reply::read(send(Some("0123456789abcdef0123456789abcdef"), None).await.unwrap()).await;
    let foreign_host = Reply::read(send(Some(app.emu.admin_key()), Some("evil.example")).await.unwrap()).await;

    // Assert
    assert_eq!((without_key.status, without_key.error()), (401, "admin_key_required"), "{without_key:?}");
    assert_eq!((wrong_key.status, wrong_key.error()), (401, "admin_key_required"), "{wrong_key:?}");
    assert_eq!((foreign_host.status, foreign_host.error()), (403, "host_not_allowed"), "{foreign_host:?}");
    assert!(app.emu.stored_event_ids(ACME.2).is_empty());
}
