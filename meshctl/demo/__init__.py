"""The pieces of `meshctl demo`: launching the example mesh, driving load, showing it."""
