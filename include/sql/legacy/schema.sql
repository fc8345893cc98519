-- The legacy chatbot application's schema, as it runs in production.
--
-- Reproduced faithfully, warts included: naive timestamps (UTC by
-- convention), no foreign keys, no unique email, JSON kept in text columns,
-- free-text roles. Seeding rebuilds the whole world, so this drops first.

DROP TABLE IF EXISTS media_assets, messages, conversations, agents, users;

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    email         text NOT NULL,
    display_name  text,
    avatar_url    text,
    password_hash text,
    created_at    timestamp NOT NULL,
    updated_at    timestamp,
    deleted_at    timestamp
);

CREATE TABLE agents (
    id            uuid PRIMARY KEY,
    owner_id      uuid,
    name          text NOT NULL,
    description   text,
    system_prompt text NOT NULL,
    model         text NOT NULL,
    temperature   double precision,
    tools         text,
    is_public     boolean NOT NULL,
    created_at    timestamp NOT NULL,
    updated_at    timestamp
);

CREATE TABLE conversations (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL,
    agent_id   uuid,
    title      text,
    created_at timestamp NOT NULL,
    updated_at timestamp,
    deleted_at timestamp
);

CREATE TABLE messages (
    id              bigserial PRIMARY KEY,
    conversation_id uuid NOT NULL,
    role            text NOT NULL,
    content         text NOT NULL,
    token_count     integer,
    model           text,
    metadata        text,
    created_at      timestamp NOT NULL
);

CREATE TABLE media_assets (
    id              uuid PRIMARY KEY,
    owner_id        uuid NOT NULL,
    conversation_id uuid,
    message_id      bigint,
    file_name       text NOT NULL,
    mime_type       text,
    size_bytes      bigint NOT NULL,
    storage_key     text NOT NULL,
    sha256          text,
    created_at      timestamp NOT NULL
);

CREATE INDEX messages_conversation_id_idx ON messages (conversation_id);
CREATE INDEX conversations_user_id_idx ON conversations (user_id);
CREATE INDEX agents_owner_id_idx ON agents (owner_id);
CREATE INDEX media_assets_owner_id_idx ON media_assets (owner_id);
