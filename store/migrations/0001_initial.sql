-- The callback ledger, the job outcomes, and each analysis with its sentence-level children.
-- Column names are the payload's field names in snake_case; children tables hold every field
-- of their payload item, in the payload Struct's order, keyed by (analysis_id, id).
-- No foreign keys from children to analyses on purpose: rows are replaced per analysis inside
-- one transaction by the worker, and per-row RI triggers would halve COPY throughput.

CREATE SCHEMA IF NOT EXISTS flowscribe;

CREATE TABLE flowscribe.callbacks (
    id            uuid PRIMARY KEY,          -- the gateway's message id
    received_at   timestamptz NOT NULL,      -- when the gateway received it
    processed_at  timestamptz NOT NULL DEFAULT now(),
    content_type  text NOT NULL,
    body_sha256   text NOT NULL,             -- hex SHA-256 of body
    body          bytea NOT NULL,            -- the exact bytes received
    outcome       text NOT NULL
                  CHECK (outcome IN ('ingested', 'duplicate', 'superseded', 'job_failed')),
    analysis_id   uuid,
    job_id        uuid
);
CREATE INDEX callbacks_body_sha256_idx ON flowscribe.callbacks (body_sha256);
CREATE INDEX callbacks_analysis_id_idx ON flowscribe.callbacks (analysis_id);
CREATE INDEX callbacks_received_at_idx ON flowscribe.callbacks (received_at);

CREATE TABLE flowscribe.jobs (
    job_id        uuid PRIMARY KEY,
    success       boolean,
    error_msg     text,
    analysis_id   uuid,
    received_at   timestamptz NOT NULL,
    callback_id   uuid NOT NULL
);

CREATE TABLE flowscribe.analyses (
    id                 uuid PRIMARY KEY,
    job_id             uuid,
    conversation_text  text,
    language_code      text,
    date_created       timestamptz,
    received_at        timestamptz NOT NULL,  -- of the callback whose version this is
    callback_id        uuid NOT NULL
);

CREATE TABLE flowscribe.sentences (
    analysis_id            uuid NOT NULL,
    id                     uuid NOT NULL,
    audio_conversation_id  uuid,
    sentence               text,
    speaker_label          text,
    speaker_type_id        integer,
    is_agent               boolean,
    date_created           timestamptz,
    extra_info             text,
    PRIMARY KEY (analysis_id, id)
);

CREATE TABLE flowscribe.sentence_entities (
    analysis_id    uuid NOT NULL,
    id             uuid NOT NULL,
    dictation_id   uuid,
    sentence_id    uuid,
    entity_name    text,
    confidence     double precision,
    speaker_label  text,
    is_agent       boolean,
    PRIMARY KEY (analysis_id, id)
);

CREATE TABLE flowscribe.sentence_intents (
    analysis_id    uuid NOT NULL,
    id             uuid NOT NULL,
    dictation_id   uuid,
    sentence_id    uuid,
    intent         text,
    confidence     double precision,
    speaker_label  text,
    is_agent       boolean,
    PRIMARY KEY (analysis_id, id)
);

CREATE TABLE flowscribe.sentence_keywords (
    analysis_id    uuid NOT NULL,
    id             uuid NOT NULL,
    dictation_id   uuid,
    sentence_id    uuid,
    keyword        text,
    confidence     double precision,
    speaker_label  text,
    is_agent       boolean,
    PRIMARY KEY (analysis_id, id)
);

CREATE TABLE flowscribe.sentence_scorings (
    analysis_id                        uuid NOT NULL,
    id                                 uuid NOT NULL,
    dictation_id                       uuid,
    sentence_id                        uuid,
    agent_id                           uuid,
    score_performance                  double precision,
    score_empathy                      double precision,
    score_quality                      double precision,
    score_ownership                    double precision,
    score_compliments                  double precision,
    score_summary                      double precision,
    customer_satisfaction_percentage   double precision,
    silence_percentage                 double precision,
    problem_resolution_percentage      double precision,
    customer_effort_percentage         double precision,
    customer_average_rating            double precision,
    waiting_time                       double precision,
    customer_questions_time            double precision,
    agent_time                         double precision,
    staying_at_home                    boolean,
    tested_positive                    boolean,
    tested_negative                    boolean,
    living_with_eldery                 boolean,
    customers_dissatisfied_percentage  double precision,
    date                               timestamptz,
    date_updated                       timestamptz,
    cross_talking                      double precision,
    joy                                double precision,
    negativity                         double precision,
    anger                              double precision,
    shouting                           double precision,
    disgust                            double precision,
    fear                               double precision,
    sadness                            double precision,
    relevance                          double precision,
    sentiment_score                    double precision,
    PRIMARY KEY (analysis_id, id)
);

CREATE TABLE flowscribe.sentence_topics (
    analysis_id    uuid NOT NULL,
    id             uuid NOT NULL,
    dictation_id   uuid,
    sentence_id    uuid,
    topic          text,
    confidence     double precision,
    speaker_label  text,
    is_agent       boolean,
    rank           double precision,
    duration       double precision,
    time_stamp     timestamptz,
    start_seconds  double precision,
    end_seconds    double precision,
    PRIMARY KEY (analysis_id, id)
);
