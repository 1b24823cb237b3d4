-- What caused a task beyond its trigger: the forge's delivery (`github delivery <id>`).
ALTER TABLE tasks ADD COLUMN cause TEXT;
