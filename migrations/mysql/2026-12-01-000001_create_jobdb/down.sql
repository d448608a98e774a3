DROP TABLE schedules;
DROP TABLE paused_queues;
DROP TABLE results;
DROP TABLE jobs;
