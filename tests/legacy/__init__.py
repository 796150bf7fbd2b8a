"""Legacy cache documents as the Node.js (Mongoose) service wrote them, and their loader."""
