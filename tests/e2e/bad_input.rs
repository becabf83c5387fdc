//! Hostile and malformed requests get clear 4xx answers and the server keeps serving.
