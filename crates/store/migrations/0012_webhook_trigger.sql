-- Webhook tasks name their forge in their trigger (`webhook:github`); the forge of those
-- stored as plain `webhook` is in `requested_by` (`webhook:<forge>`), and `socket.io` is
-- spelled as the protocol is.
UPDATE tasks SET trigger_kind = requested_by WHERE trigger_kind = 'webhook' AND requested_by LIKE 'webhook:%';
UPDATE tasks SET trigger_kind = 'socket.io' WHERE trigger_kind = 'socket_io';
