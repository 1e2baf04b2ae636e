-- Analyst-ready views: the schema flowscribe_analytics, version 1 of a documented contract
-- (README, "Analytics views"). A breaking change adds flowscribe_analytics_v2 beside it, so
-- dashboards built on version 1 keep working.
--
-- The per-day views read per-conversation summaries, never the sentence-level tables: a
-- dashboard's cost follows the number of conversations, not of sentences. The worker writes
-- the summaries with flowscribe.summarise() in the transaction that writes the analysis's rows
-- (so they are as current as the rows, replaced with them, rewritten by reprocess); this
-- migration summarises what is stored already.

-- The reporting time zone: the "day" of every view is the calendar day there. One row.
-- Changed only through flowscribe.set_reporting_time_zone() (run by `migrate` when
-- FLOWSCRIBE_REPORTING_TIME_ZONE is set), which recomputes the stored days.
CREATE TABLE flowscribe.reporting (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    time_zone  text NOT NULL DEFAULT 'UTC'
);
INSERT INTO flowscribe.reporting DEFAULT VALUES;

-- One row per stored analysis (the stored version only): what the views aggregate.
-- Averages are over the analysis's scorings, nulls ignored; null when none has the figure.
CREATE TABLE flowscribe.conversation_summaries (
    analysis_id                       uuid PRIMARY KEY,
    callback_id                       uuid NOT NULL,
    job_id                            uuid,
    language_code                     text,
    date_created                      timestamptz,
    received_at                       timestamptz NOT NULL,
    day                               date NOT NULL,   -- of coalesce(date_created, received_at), reporting zone
    agent_id                          uuid,            -- the AgentID most of its scorings carry
    sentences                         integer NOT NULL,
    agent_sentences                   integer NOT NULL,
    customer_sentences                integer NOT NULL,
    agent_talk_share                  double precision, -- agent's share of the transcript's characters
    scorings                          integer NOT NULL,
    score_performance                 double precision,
    score_empathy                     double precision,
    score_quality                     double precision,
    score_ownership                   double precision,
    score_compliments                 double precision,
    score_summary                     double precision,
    customer_satisfaction_percentage  double precision,
    silence_percentage                double precision,
    problem_resolution_percentage     double precision,
    customer_effort_percentage        double precision,
    customer_average_rating           double precision,
    waiting_time                      double precision,
    cross_talking                     double precision,
    joy                               double precision,
    negativity                        double precision,
    anger                             double precision,
    shouting                          double precision,
    disgust                           double precision,
    fear                              double precision,
    sadness                           double precision,
    relevance                         double precision,
    sentiment_score                   double precision
);
CREATE INDEX conversation_summaries_day_idx ON flowscribe.conversation_summaries (day);
CREATE INDEX conversation_summaries_agent_day_idx ON flowscribe.conversation_summaries (agent_id, day);

-- Per analysis, each distinct topic / intent / keyword / entity and how often it was mentioned.
-- `day` is the analysis's (copied so the per-day views read one index and no join).
CREATE TABLE flowscribe.conversation_terms (
    analysis_id  uuid NOT NULL,
    kind         text COLLATE "C" NOT NULL CHECK (kind IN ('topic', 'intent', 'keyword', 'entity')),
    term         text COLLATE "C" NOT NULL,  -- byte order: fast to index, the same on every server
    mentions     integer NOT NULL,
    day          date NOT NULL,
    PRIMARY KEY (analysis_id, kind, term)
);
CREATE INDEX conversation_terms_kind_day_idx ON flowscribe.conversation_terms (kind, day, term) INCLUDE (mentions);

-- (Re)write the summaries of the given analyses from their stored rows; an id with no stored
-- analysis loses its summary. The worker calls it for every analysis it stores, after its rows.
-- Returns the rows written to each table (the worker counts them in its metrics).
-- The reporting row is read FOR SHARE: a change of zone waits for writers in flight (and they
-- for it), so no summary keeps a day of the old zone.
CREATE FUNCTION flowscribe.summarise(ids uuid[], OUT summaries integer, OUT terms integer)
LANGUAGE plpgsql AS $$
DECLARE
    zone text;
BEGIN
    SELECT time_zone INTO zone FROM flowscribe.reporting FOR SHARE;
    DELETE FROM flowscribe.conversation_terms WHERE analysis_id = ANY (ids);
    DELETE FROM flowscribe.conversation_summaries WHERE analysis_id = ANY (ids);
    INSERT INTO flowscribe.conversation_summaries
    SELECT a.id, a.callback_id, a.job_id, a.language_code, a.date_created, a.received_at,
           (coalesce(a.date_created, a.received_at) AT TIME ZONE zone)::date,
           sc.agent_id, se.sentences, se.agent_sentences, se.customer_sentences, se.agent_talk_share,
           sc.scorings, sc.score_performance, sc.score_empathy, sc.score_quality, sc.score_ownership,
           sc.score_compliments, sc.score_summary, sc.customer_satisfaction_percentage,
           sc.silence_percentage, sc.problem_resolution_percentage, sc.customer_effort_percentage,
           sc.customer_average_rating, sc.waiting_time, sc.cross_talking, sc.joy, sc.negativity,
           sc.anger, sc.shouting, sc.disgust, sc.fear, sc.sadness, sc.relevance, sc.sentiment_score
    FROM flowscribe.analyses AS a
    CROSS JOIN LATERAL (
        SELECT count(*) AS sentences,
               count(*) FILTER (WHERE s.is_agent) AS agent_sentences,
               count(*) FILTER (WHERE NOT s.is_agent) AS customer_sentences,
               sum(length(s.sentence)) FILTER (WHERE s.is_agent)::double precision
                   / nullif(sum(length(s.sentence)) FILTER (WHERE s.is_agent IS NOT NULL), 0) AS agent_talk_share
        FROM flowscribe.sentences AS s WHERE s.analysis_id = a.id
    ) AS se
    CROSS JOIN LATERAL (
        SELECT mode() WITHIN GROUP (ORDER BY c.agent_id) AS agent_id, count(*) AS scorings,
               avg(c.score_performance) AS score_performance, avg(c.score_empathy) AS score_empathy,
               avg(c.score_quality) AS score_quality, avg(c.score_ownership) AS score_ownership,
               avg(c.score_compliments) AS score_compliments, avg(c.score_summary) AS score_summary,
               avg(c.customer_satisfaction_percentage) AS customer_satisfaction_percentage,
               avg(c.silence_percentage) AS silence_percentage,
               avg(c.problem_resolution_percentage) AS problem_resolution_percentage,
               avg(c.customer_effort_percentage) AS customer_effort_percentage,
               avg(c.customer_average_rating) AS customer_average_rating,
               avg(c.waiting_time) AS waiting_time, avg(c.cross_talking) AS cross_talking,
               avg(c.joy) AS joy, avg(c.negativity) AS negativity, avg(c.anger) AS anger,
               avg(c.shouting) AS shouting, avg(c.disgust) AS disgust, avg(c.fear) AS fear,
               avg(c.sadness) AS sadness, avg(c.relevance) AS relevance,
               avg(c.sentiment_score) AS sentiment_score
        FROM flowscribe.sentence_scorings AS c WHERE c.analysis_id = a.id
    ) AS sc
    WHERE a.id = ANY (ids);
    GET DIAGNOSTICS summaries = ROW_COUNT;

    INSERT INTO flowscribe.conversation_terms (analysis_id, kind, term, mentions, day)
    SELECT d.analysis_id, t.kind, t.term, t.mentions, d.day
    FROM flowscribe.conversation_summaries AS d
    CROSS JOIN LATERAL (
        SELECT 'topic' AS kind, x.topic AS term, count(*) AS mentions
        FROM flowscribe.sentence_topics AS x
        WHERE x.analysis_id = d.analysis_id AND x.topic IS NOT NULL GROUP BY x.topic
        UNION ALL
        SELECT 'intent', x.intent, count(*)
        FROM flowscribe.sentence_intents AS x
        WHERE x.analysis_id = d.analysis_id AND x.intent IS NOT NULL GROUP BY x.intent
        UNION ALL
        SELECT 'keyword', x.keyword, count(*)
        FROM flowscribe.sentence_keywords AS x
        WHERE x.analysis_id = d.analysis_id AND x.keyword IS NOT NULL GROUP BY x.keyword
        UNION ALL
        SELECT 'entity', x.entity_name, count(*)
        FROM flowscribe.sentence_entities AS x
        WHERE x.analysis_id = d.analysis_id AND x.entity_name IS NOT NULL GROUP BY x.entity_name
    ) AS t
    WHERE d.analysis_id = ANY (ids);
    GET DIAGNOSTICS terms = ROW_COUNT;
END
$$;

-- Make `zone` the reporting time zone and move every stored day to it, in the caller's
-- transaction. True if it changed. Only zone names PostgreSQL knows (pg_timezone_names:
-- 'UTC', 'Europe/Berlin', ...) are accepted, not POSIX offsets, whose sign reads backwards.
CREATE FUNCTION flowscribe.set_reporting_time_zone(zone text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    current text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = zone) THEN
        RAISE EXCEPTION 'unknown time zone %', quote_literal(zone)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'use a name from pg_timezone_names, e.g. UTC or America/New_York';
    END IF;
    -- The row lock waits for the writers holding the zone FOR SHARE, and holds off new ones.
    SELECT time_zone INTO current FROM flowscribe.reporting FOR UPDATE;
    IF current = zone THEN
        RETURN false;
    END IF;
    UPDATE flowscribe.reporting SET time_zone = zone;
    UPDATE flowscribe.conversation_summaries
    SET day = (coalesce(date_created, received_at) AT TIME ZONE zone)::date;
    UPDATE flowscribe.conversation_terms AS t SET day = s.day
    FROM flowscribe.conversation_summaries AS s
    WHERE t.analysis_id = s.analysis_id AND t.day <> s.day;
    RETURN true;
END
$$;

SELECT * FROM flowscribe.summarise(ARRAY(SELECT id FROM flowscribe.analyses));

-- Version 1 of the contract. Every view and column is documented in the README.
CREATE SCHEMA flowscribe_analytics;
COMMENT ON SCHEMA flowscribe_analytics IS
    'flowscribe-ingest analytics views, contract version 1 (see the README, "Analytics views")';

CREATE VIEW flowscribe_analytics.reporting AS
SELECT time_zone FROM flowscribe.reporting;

CREATE VIEW flowscribe_analytics.conversations AS
SELECT s.analysis_id, s.callback_id, s.job_id, s.language_code, s.date_created, s.received_at,
       s.day, s.agent_id, s.sentences, s.agent_sentences, s.customer_sentences, s.agent_talk_share,
       s.scorings, s.score_performance, s.score_empathy, s.score_quality, s.score_ownership,
       s.score_compliments, s.score_summary, s.customer_satisfaction_percentage,
       s.silence_percentage, s.problem_resolution_percentage, s.customer_effort_percentage,
       s.customer_average_rating, s.waiting_time, s.cross_talking, s.joy, s.negativity, s.anger,
       s.shouting, s.disgust, s.fear, s.sadness, s.relevance, s.sentiment_score,
       ARRAY(SELECT t.term FROM flowscribe.conversation_terms AS t
             WHERE t.analysis_id = s.analysis_id AND t.kind = 'topic'
             ORDER BY t.mentions DESC, t.term) AS topics,
       ARRAY(SELECT t.term FROM flowscribe.conversation_terms AS t
             WHERE t.analysis_id = s.analysis_id AND t.kind = 'intent'
             ORDER BY t.mentions DESC, t.term) AS intents
FROM flowscribe.conversation_summaries AS s;

-- Daily averages are means of the conversations' averages: each conversation counts once.
CREATE VIEW flowscribe_analytics.agent_daily AS
SELECT agent_id, day, count(*) AS conversations, sum(sentences) AS sentences,
       sum(agent_sentences) AS agent_sentences, sum(customer_sentences) AS customer_sentences,
       avg(agent_talk_share) AS agent_talk_share,
       avg(score_performance) AS score_performance, avg(score_empathy) AS score_empathy,
       avg(score_quality) AS score_quality, avg(score_ownership) AS score_ownership,
       avg(score_compliments) AS score_compliments, avg(score_summary) AS score_summary,
       avg(customer_satisfaction_percentage) AS customer_satisfaction_percentage,
       avg(silence_percentage) AS silence_percentage,
       avg(problem_resolution_percentage) AS problem_resolution_percentage,
       avg(customer_effort_percentage) AS customer_effort_percentage,
       avg(customer_average_rating) AS customer_average_rating,
       avg(waiting_time) AS waiting_time, avg(cross_talking) AS cross_talking,
       avg(joy) AS joy, avg(negativity) AS negativity, avg(anger) AS anger,
       avg(shouting) AS shouting, avg(disgust) AS disgust, avg(fear) AS fear,
       avg(sadness) AS sadness, avg(relevance) AS relevance, avg(sentiment_score) AS sentiment_score
FROM flowscribe.conversation_summaries
GROUP BY agent_id, day;

CREATE VIEW flowscribe_analytics.sentiment_daily AS
SELECT day, count(*) AS conversations, avg(sentiment_score) AS sentiment_score,
       avg(joy) AS joy, avg(negativity) AS negativity, avg(anger) AS anger,
       avg(shouting) AS shouting, avg(disgust) AS disgust, avg(fear) AS fear, avg(sadness) AS sadness
FROM flowscribe.conversation_summaries
GROUP BY day;

CREATE VIEW flowscribe_analytics.topics_daily AS
SELECT day, term AS topic, sum(mentions) AS mentions, count(*) AS conversations
FROM flowscribe.conversation_terms WHERE kind = 'topic'
GROUP BY day, term;

CREATE VIEW flowscribe_analytics.intents_daily AS
SELECT day, term AS intent, sum(mentions) AS mentions, count(*) AS conversations
FROM flowscribe.conversation_terms WHERE kind = 'intent'
GROUP BY day, term;

CREATE VIEW flowscribe_analytics.keywords_daily AS
SELECT day, term AS keyword, sum(mentions) AS mentions, count(*) AS conversations
FROM flowscribe.conversation_terms WHERE kind = 'keyword'
GROUP BY day, term;

CREATE VIEW flowscribe_analytics.entities_daily AS
SELECT day, term AS entity_name, sum(mentions) AS mentions, count(*) AS conversations
FROM flowscribe.conversation_terms WHERE kind = 'entity'
GROUP BY day, term;
