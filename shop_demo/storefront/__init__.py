"""The demo storefront: one page that searches through the clip_search REST API."""
