"""HTTP routes, one APIRouter per surface: v1 (sync), v2 (submit, poll, cancel), extras (health, playground,
result files). Handlers only translate HTTP; the rules are in service/jobs/."""
