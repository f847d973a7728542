"""hpcsur.store"""
