//! `/openapi.json` and the Swagger UI at `/docs`, covering the whole public API.

use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::state::AppState;
use crate::{admin, proxy, routes, stats};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kvstore gateway",
        description = "The single entry point of kvstore: every key is served by its owner on a \
            SHA-256 consistent-hash ring. Answers from a server carry `server_used` and the \
            `X-Server-Used` header. Writes go to the key's primary only: when it is down \
            the answer is 503 with `Retry-After`. With replication (R > 1), a read whose \
            primary is down or still syncing is answered by the key's other replicas, \
            with `X-Kv-Primary-Unavailable` naming the primary. When an API token is \
            configured, every route but /health, /ready and /metrics needs \
            `Authorization: Bearer TOKEN`. `/admin/snapshot` streams a member's database: \
            with authentication off it is as open as every other route."
    ),
    paths(
        proxy::put,
        proxy::put_post_doc,
        proxy::get,
        proxy::versions,
        stats::servers,
        stats::cache_stats,
        stats::db_stats,
        admin::snapshot,
        routes::health,
        routes::ready,
        routes::metrics,
    ),
    components(schemas(kv_common::ErrorBody, kv_common::ErrorCode)),
    modifiers(&BearerToken),
    security(("bearer" = [])),
    tags(
        (name = "keys", description = "Versioned keys, forwarded to their owner"),
        (name = "cluster", description = "The ring and its members"),
        (name = "operations", description = "Probes and metrics (never need a token)"),
    )
)]
pub struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The documentation routes; the Swagger UI assets are vendored in the binary.
pub fn docs() -> Router<AppState> {
    SwaggerUi::new("/docs")
        .url("/openapi.json", ApiDoc::openapi())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_covers_every_public_route() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/put/{key}",
            "/get/{key}",
            "/versions/{key}",
            "/servers",
            "/cache/stats",
            "/db/stats",
            "/admin/snapshot",
            "/health",
            "/ready",
            "/metrics",
        ] {
            assert!(paths.contains_key(path), "{path} missing");
        }
        assert!(paths["/put/{key}"].get("put").is_some());
        assert!(paths["/put/{key}"].get("post").is_some());
        assert!(doc["components"]["schemas"].get("PutResponse").is_some());
        let get = &paths["/get/{key}"]["get"]["responses"];
        assert!(
            get["200"]["headers"]
                .get("x-kv-primary-unavailable")
                .is_some()
        );
        assert!(get["503"]["headers"].get("retry-after").is_some());
        let put = &paths["/put/{key}"]["put"]["responses"];
        assert!(put["200"]["headers"].get("x-kv-acked-by").is_some());
        let member = &doc["components"]["schemas"]["MemberStatus"]["properties"];
        assert!(member.get("replication_lag").is_some() && member.get("synced").is_some());
    }
}
