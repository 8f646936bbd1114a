//! The admin console at `/console`: five static files compiled into the binary (no build
//! step, no CDN, works offline). The page talks to the public admin API with the key the
//! user types; the server side here only serves the files, with a strict Content Security
//! Policy so that nothing but these files can run on a page that holds the admin key.

use poem::http::header;
use poem::{Endpoint, EndpointExt, Response, Route, get, handler};

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const SALE_JS: &str = include_str!("console/sale.js");
const RAFFLE_JS: &str = include_str!("console/raffle.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// Only our own files, and calls to our own origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

fn file(body: &'static str, content_type: &'static str) -> Response {
    Response::builder()
        .content_type(content_type)
        .header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        // Small files that change with the binary: revalidate rather than cache stale.
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
}

#[handler]
fn index() -> Response {
    file(INDEX_HTML, "text/html; charset=utf-8")
}

#[handler]
fn script() -> Response {
    file(CONSOLE_JS, "text/javascript; charset=utf-8")
}

#[handler]
fn sale_script() -> Response {
    file(SALE_JS, "text/javascript; charset=utf-8")
}

#[handler]
fn raffle_script() -> Response {
    file(RAFFLE_JS, "text/javascript; charset=utf-8")
}

#[handler]
fn stylesheet() -> Response {
    file(CONSOLE_CSS, "text/css; charset=utf-8")
}

/// The console's routes, to nest at `/console`.
pub fn routes() -> impl Endpoint<Output = Response> {
    Route::new()
        .at("/", get(index))
        .at("/console.js", get(script))
        .at("/sale.js", get(sale_script))
        .at("/raffle.js", get(raffle_script))
        .at("/console.css", get(stylesheet))
        .map_to_response()
}
