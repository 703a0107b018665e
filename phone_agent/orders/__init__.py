"""Orders: the schema (`models`), read-only queries (`store.OrderStore`), spoken-input
normalisation (`spoken`), demo data (`demo`) and the model's tools (`tools.register_order_tools`).
Engines, migrations and seeding: `phone_agent.db`. Nothing is imported here, so the database code
does not pull in the Gemini SDK."""
