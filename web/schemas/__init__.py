"""The API's pydantic models: what each route takes and answers. They validate requests (through
``web.api``) and make the OpenAPI document; checks a type cannot say (regex safety, phone numbers,
proxy URLs, recipients) are validators that raise the API's own messages."""
