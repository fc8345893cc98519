-- True when a JSON text nests deeper than 100 levels, measured without parsing
-- it (see messages.sql); NULL (not checked) for a text with at most 100 opening
-- brackets. Used as {json_too_deep(<text column>)}.
CASE WHEN octet_length({arg}) > 200
          AND length({arg}) - length(translate({arg}, '[{{', '')) > 100
     THEN (SELECT max(depth) > 100 FROM (
       SELECT sum(CASE WHEN b IN ('[', '{{') THEN 1 ELSE -1 END) OVER (ORDER BY n) AS depth
       FROM string_to_table(regexp_replace(regexp_replace(
                {arg}, '"(?:[^"\\]|\\.)*"', '', 'g'), '[^][{{}}]', '', 'g'), NULL)
            WITH ORDINALITY AS t (b, n)) d) END
