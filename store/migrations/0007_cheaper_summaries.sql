-- Summaries for less: a worker pays for its analytics summaries in every batch, and they cost
-- it far more than the 10% the analytics were allowed (bench/ANALYTICS.md). Three changes; what
-- the views show is unchanged (tests/test_analytics.py holds them to the payloads).
--
-- 1. Each summary carries its terms. conversation_terms held a row per distinct topic,
--    intent, keyword and entity of an analysis: 9 rows beside a small analysis's 21, 39
--    beside a typical one's summary, each with two index entries. Inserting them was two
--    thirds of summarise() (60 of 90 ms for 100 typical analyses, EXPLAIN ANALYZE). Now each
--    kind is a pair of arrays in the summary row (the terms, most mentioned first, and their
--    mentions), and the per-day term views unnest the summaries of the days they are asked
--    for: still no sentence-level table read, still one index (the summaries' day).
-- 2. Every statement of summarise() reads or deletes the rows of a batch's analyses by id.
--    Where statistics are missing or stale (a new database, a bulk load, autovacuum off or
--    behind) the planner cannot tell that `analysis_id = ANY (ids)` on a key that is not
--    unique finds a handful of rows per id, and scanned whole tables: the terms delete read
--    all of conversation_terms in every batch, so a batch cost more the larger the database.
--    These statements are only ever right as index lookups: the function plans them with
--    sequential scans ruled out, and once per connection (the worker's own statements are
--    planned per batch, force_custom_plan; these cannot gain from it).
-- 3. The zone was read FOR SHARE: a row lock writes the row, and batches in flight together
--    turn it into a new MultiXact each time. A shared transaction-scoped advisory lock orders
--    writers against a change of zone the same way and writes nothing. Its key is of the
--    two-int4 form, a space apart from the bigint keys the worker locks per batch.

ALTER TABLE flowscribe.conversation_summaries
    ADD COLUMN topics            text[] COLLATE "C" NOT NULL DEFAULT '{}',  -- distinct, most mentioned first, then by term
    ADD COLUMN topic_mentions    integer[] NOT NULL DEFAULT '{}',          -- of each, in the same order
    ADD COLUMN intents           text[] COLLATE "C" NOT NULL DEFAULT '{}',
    ADD COLUMN intent_mentions   integer[] NOT NULL DEFAULT '{}',
    ADD COLUMN keywords          text[] COLLATE "C" NOT NULL DEFAULT '{}',
    ADD COLUMN keyword_mentions  integer[] NOT NULL DEFAULT '{}',
    ADD COLUMN entities          text[] COLLATE "C" NOT NULL DEFAULT '{}',
    ADD COLUMN entity_mentions   integer[] NOT NULL DEFAULT '{}';

UPDATE flowscribe.conversation_summaries AS s
SET topics = coalesce(t.topics, '{}'), topic_mentions = coalesce(t.topic_mentions, '{}'),
    intents = coalesce(t.intents, '{}'), intent_mentions = coalesce(t.intent_mentions, '{}'),
    keywords = coalesce(t.keywords, '{}'), keyword_mentions = coalesce(t.keyword_mentions, '{}'),
    entities = coalesce(t.entities, '{}'), entity_mentions = coalesce(t.entity_mentions, '{}')
FROM (
    SELECT analysis_id,
           array_agg(term ORDER BY mentions DESC, term) FILTER (WHERE kind = 'topic') AS topics,
           array_agg(mentions ORDER BY mentions DESC, term) FILTER (WHERE kind = 'topic') AS topic_mentions,
           array_agg(term ORDER BY mentions DESC, term) FILTER (WHERE kind = 'intent') AS intents,
           array_agg(mentions ORDER BY mentions DESC, term) FILTER (WHERE kind = 'intent') AS intent_mentions,
           array_agg(term ORDER BY mentions DESC, term) FILTER (WHERE kind = 'keyword') AS keywords,
           array_agg(mentions ORDER BY mentions DESC, term) FILTER (WHERE kind = 'keyword') AS keyword_mentions,
           array_agg(term ORDER BY mentions DESC, term) FILTER (WHERE kind = 'entity') AS entities,
           array_agg(mentions ORDER BY mentions DESC, term) FILTER (WHERE kind = 'entity') AS entity_mentions
    FROM flowscribe.conversation_terms
    GROUP BY analysis_id
) AS t
WHERE t.analysis_id = s.analysis_id;

-- (Re)write the summaries of the given analyses from their stored rows; an id with no stored
-- analysis loses its summary. The worker calls it for every analysis it stores, after its rows.
-- Returns the summaries written and the distinct terms they hold: the signature of 0003's, which
-- workers of the version before keep calling during a rolling upgrade.
CREATE OR REPLACE FUNCTION flowscribe.summarise(ids uuid[], OUT summaries integer, OUT terms integer)
LANGUAGE plpgsql
SET enable_seqscan = off                  -- (2) above
SET plan_cache_mode = force_generic_plan  -- (2) above
AS $$
DECLARE
    zone text;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(0, 2026003);  -- (3) above; see set_reporting_time_zone
    SELECT time_zone INTO zone FROM flowscribe.reporting;
    DELETE FROM flowscribe.conversation_summaries WHERE analysis_id = ANY (ids);
    WITH written AS (
    INSERT INTO flowscribe.conversation_summaries
    SELECT a.id, a.callback_id, a.job_id, a.language_code, a.date_created, a.received_at,
           (coalesce(a.date_created, a.received_at) AT TIME ZONE zone)::date,
           sc.agent_id, se.sentences, se.agent_sentences, se.customer_sentences, se.agent_talk_share,
           sc.scorings, sc.score_performance, sc.score_empathy, sc.score_quality, sc.score_ownership,
           sc.score_compliments, sc.score_summary, sc.customer_satisfaction_percentage,
           sc.silence_percentage, sc.problem_resolution_percentage, sc.customer_effort_percentage,
           sc.customer_average_rating, sc.waiting_time, sc.cross_talking, sc.joy, sc.negativity,
           sc.anger, sc.shouting, sc.disgust, sc.fear, sc.sadness, sc.relevance, sc.sentiment_score,
           tp.names, tp.counts, it.names, it.counts, kw.names, kw.counts, en.names, en.counts
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
    CROSS JOIN LATERAL (
        SELECT coalesce(array_agg(g.term ORDER BY g.mentions DESC, g.term COLLATE "C"), '{}') AS names,
               coalesce(array_agg(g.mentions ORDER BY g.mentions DESC, g.term COLLATE "C"), '{}') AS counts
        FROM (SELECT x.topic AS term, count(*)::integer AS mentions FROM flowscribe.sentence_topics AS x
              WHERE x.analysis_id = a.id AND x.topic IS NOT NULL GROUP BY x.topic) AS g
    ) AS tp
    CROSS JOIN LATERAL (
        SELECT coalesce(array_agg(g.term ORDER BY g.mentions DESC, g.term COLLATE "C"), '{}') AS names,
               coalesce(array_agg(g.mentions ORDER BY g.mentions DESC, g.term COLLATE "C"), '{}') AS counts
        FROM (SELECT x.intent AS term, count(*)::integer AS mentions FROM flowscribe.sentence_intents AS x
              WHERE x.analysis_id = a.id AND x.intent IS NOT NULL GROUP BY x.intent) AS g
    ) AS it
    CROSS JOIN LATERAL (
        SELECT coalesce(array_agg(g.term ORDER BY g.mentions DESC, g.term COLLATE "C"), '{}') AS names,
               coalesce(array_agg(g.mentions ORDER BY g.mentions DESC, g.term COLLATE "C"), '{}') AS counts
        FROM (SELECT x.keyword AS term, count(*)::integer AS mentions FROM flowscribe.sentence_keywords AS x
              WHERE x.analysis_id = a.id AND x.keyword IS NOT NULL GROUP BY x.keyword) AS g
    ) AS kw
    CROSS JOIN LATERAL (
        SELECT coalesce(array_agg(g.term ORDER BY g.mentions DESC, g.term COLLATE "C"), '{}') AS names,
               coalesce(array_agg(g.mentions ORDER BY g.mentions DESC, g.term COLLATE "C"), '{}') AS counts
        FROM (SELECT x.entity_name AS term, count(*)::integer AS mentions FROM flowscribe.sentence_entities AS x
              WHERE x.analysis_id = a.id AND x.entity_name IS NOT NULL GROUP BY x.entity_name) AS g
    ) AS en
    WHERE a.id = ANY (ids)
    RETURNING cardinality(topics) + cardinality(intents) + cardinality(keywords) + cardinality(entities) AS n
    )
    SELECT count(*), coalesce(sum(n), 0) INTO summaries, terms FROM written;
END
$$;

CREATE OR REPLACE FUNCTION flowscribe.set_reporting_time_zone(zone text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    current text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = zone) THEN
        RAISE EXCEPTION 'unknown time zone %', quote_literal(zone)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'use a name from pg_timezone_names, e.g. UTC or America/New_York';
    END IF;
    -- Waits for the writers summarising under the zone (they hold this lock shared), and
    -- holds off new ones until this transaction ends.
    PERFORM pg_advisory_xact_lock(0, 2026003);
    SELECT time_zone INTO current FROM flowscribe.reporting;
    IF current = zone THEN
        RETURN false;
    END IF;
    UPDATE flowscribe.reporting SET time_zone = zone;
    UPDATE flowscribe.conversation_summaries
    SET day = (coalesce(date_created, received_at) AT TIME ZONE zone)::date;
    RETURN true;
END
$$;

-- Version 1 of the contract, the same columns: only what they are read from changes.
CREATE OR REPLACE VIEW flowscribe_analytics.conversations AS
SELECT s.analysis_id, s.callback_id, s.job_id, s.language_code, s.date_created, s.received_at,
       s.day, s.agent_id, s.sentences, s.agent_sentences, s.customer_sentences, s.agent_talk_share,
       s.scorings, s.score_performance, s.score_empathy, s.score_quality, s.score_ownership,
       s.score_compliments, s.score_summary, s.customer_satisfaction_percentage,
       s.silence_percentage, s.problem_resolution_percentage, s.customer_effort_percentage,
       s.customer_average_rating, s.waiting_time, s.cross_talking, s.joy, s.negativity, s.anger,
       s.shouting, s.disgust, s.fear, s.sadness, s.relevance, s.sentiment_score,
       s.topics, s.intents
FROM flowscribe.conversation_summaries AS s;

CREATE OR REPLACE VIEW flowscribe_analytics.topics_daily AS
SELECT s.day, t.term AS topic, sum(t.mentions) AS mentions, count(*) AS conversations
FROM flowscribe.conversation_summaries AS s, unnest(s.topics, s.topic_mentions) AS t (term, mentions)
GROUP BY s.day, t.term;

CREATE OR REPLACE VIEW flowscribe_analytics.intents_daily AS
SELECT s.day, t.term AS intent, sum(t.mentions) AS mentions, count(*) AS conversations
FROM flowscribe.conversation_summaries AS s, unnest(s.intents, s.intent_mentions) AS t (term, mentions)
GROUP BY s.day, t.term;

CREATE OR REPLACE VIEW flowscribe_analytics.keywords_daily AS
SELECT s.day, t.term AS keyword, sum(t.mentions) AS mentions, count(*) AS conversations
FROM flowscribe.conversation_summaries AS s, unnest(s.keywords, s.keyword_mentions) AS t (term, mentions)
GROUP BY s.day, t.term;

CREATE OR REPLACE VIEW flowscribe_analytics.entities_daily AS
SELECT s.day, t.term AS entity_name, sum(t.mentions) AS mentions, count(*) AS conversations
FROM flowscribe.conversation_summaries AS s, unnest(s.entities, s.entity_mentions) AS t (term, mentions)
GROUP BY s.day, t.term;

DROP TABLE flowscribe.conversation_terms;
