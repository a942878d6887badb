//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::OpenApi;

use super::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kvstore server",
        description = "One kvstore storage server: versioned keys over SQLite with a \
                       write-through LRU cache. In a cluster, clients use the gateway, which \
                       exposes the same key routes."
    ),
    paths(
        routes::put, routes::post, routes::get, routes::versions,
        routes::cache_stats, routes::db_stats, routes::health, routes::ready, routes::metrics,
        super::admin::snapshot,
    ),
    tags(
        (name = "keys", description = "Versioned reads and writes"),
        (name = "stats", description = "Cache and database statistics"),
        (name = "operations", description = "Health, readiness and metrics"),
    )
)]
pub struct ApiDoc;
