-- The template data of one digest row (d): who, which period, and the three lists with their counts.
jsonb_build_object(
    'display_name', d.display_name,
    'tenant_name', d.tenant_name,
    'date', d.local_date,
    'period', d.period,
    'due_soon', coalesce(d.due_soon, '[]'::jsonb),
    'overdue', coalesce(d.overdue, '[]'::jsonb),
    'asset_updates', coalesce(d.updates, '[]'::jsonb),
    'counts', jsonb_build_object(
        'due_soon', coalesce(jsonb_array_length(d.due_soon), 0),
        'overdue', coalesce(jsonb_array_length(d.overdue), 0),
        'asset_updates', coalesce(jsonb_array_length(d.updates), 0)))
